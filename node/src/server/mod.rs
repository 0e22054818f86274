//! The listener: the accept loop and the route table (`http`), TLS (`tls`), and the web client's static files
//! (`web`). Requests are handed to `rest` handlers or, for `/v1/ws`, to `connection`.

pub mod http;
pub mod tls;
pub mod web;
