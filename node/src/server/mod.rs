//! The listener: the accept loop and the route table (`http`), trusted proxies (`proxy`: the PROXY v2 header and
//! `X-Forwarded-For`), TLS (`tls`), and the web client's static files (`web`). Requests are handed to `rest`
//! handlers or, for `/v1/ws`, to `connection`. `/metrics`, `/healthz` and `/readyz` are on the admin listener
//! (`observe::admin`).

pub mod http;
pub mod proxy;
pub mod tls;
pub mod web;
