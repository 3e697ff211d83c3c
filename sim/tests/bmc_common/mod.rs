//! Helpers shared by the BMC simulator tests: HTTP calls and Redfish error checks.

#![allow(dead_code)]

use hostplane_sim::bmc::{BmcHandle, BmcOptions, BmcSim, Model};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

pub enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Token(&'a str),
}

pub async fn call(client: &Client, method: Method, url: &str, auth: Auth<'_>, body: Option<Value>) -> Resp {
    let mut req = client.request(method, url);
    req = match auth {
        Auth::None => req,
        Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        Auth::Token(t) => req.header("X-Auth-Token", t),
    };
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

pub const ADMIN: Auth<'static> = Auth::Basic("admin", "admin");

pub async fn get(c: &Client, url: &str) -> Resp {
    call(c, Method::GET, url, ADMIN, None).await
}

pub async fn patch(c: &Client, url: &str, body: Value) -> Resp {
    call(c, Method::PATCH, url, ADMIN, Some(body)).await
}

pub fn spawn(name: &str, model: Model) -> BmcHandle {
    BmcSim::spawn(BmcOptions::new(name, model)).unwrap()
}

pub fn error_id(r: &Resp) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no Redfish error: {}", r.text))
}

pub fn assert_error(r: &Resp, status: StatusCode, id: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(error_id(r), format!("Base.1.18.{id}"), "{}", r.text);
    let info = &r.body["error"]["@Message.ExtendedInfo"][0];
    assert_eq!(info["MessageId"], format!("Base.1.18.{id}"), "{}", r.text);
    assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
}
