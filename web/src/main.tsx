import { render } from "preact";
import { App } from "./ui";
import { Store } from "./store";
import "./style.css";

const store = new Store();
// For debugging in the console and for the end-to-end suite's assertions on state.
(window as unknown as { imStore: Store }).imStore = store;
if (store.session) void store.startSession();
render(<App store={store} />, document.getElementById("app")!);
