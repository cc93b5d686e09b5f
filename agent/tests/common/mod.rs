//! The Kubernetes API as kube-rs documents testing controllers without a cluster: a
//! `tower_test` mock service under a real `kube::Client`; the test plays the API server and
//! asserts each request (method, path, query, body) in order. Only the API server is mocked.

#![allow(dead_code)]

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::time::Duration;
use tower_test::mock::{Handle, SendResponse};

pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

pub fn mock() -> (Client, ApiServer) {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), ApiServer(h))
}

/// One request the code under test made.
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Call {
    pub fn reply(self, code: u16, v: Value) {
        self.send.send_response(
            Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
        );
    }

    /// Answers with the request's own body (as a server echoes an updated object).
    pub fn ok_echo(self) {
        let b = self.body.clone();
        self.reply(200, b);
    }

    /// A transport failure (connection refused, reset).
    pub fn fail(self, why: &str) {
        self.send.send_error(std::io::Error::other(why.to_string()));
    }

    /// "METHOD path".
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

impl ApiServer {
    /// The next request, which must be `METHOD PATH` (path without the query).
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let c = self.next().await;
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            (method, path),
            "unexpected request {} {}?{} {}",
            c.method,
            c.path,
            c.query,
            c.body
        );
        c
    }

    pub async fn next(&mut self) -> Call {
        let (req, send) = tokio::time::timeout(Duration::from_secs(3600), self.0.next_request())
            .await
            .expect("a request in time")
            .expect("the client is alive");
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Call {
            method,
            path,
            query,
            content_type,
            body,
            send,
        }
    }

    /// No request arrives within `d` (the client made no call it should not have).
    pub async fn silent_for(&mut self, d: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(d, self.0.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// A Kubernetes `Status` failure body.
pub fn status_failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

pub fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .unwrap()
        .to_string()
}
