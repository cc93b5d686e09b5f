//! Bundles over HTTP(S): each file is a GET under the bundle URL, size-capped (Content-Length
//! checked first, then the body read with a hard limit), retried with exponential backoff.

use crate::bundle::source::{BundleSource, SourceError};
use std::io::Read;
use std::time::Duration;

pub struct HttpSource {
    base: String,
    client: reqwest::blocking::Client,
    retries: u32,
    backoff: Duration,
}

/// Timeouts and retries of an [`HttpSource`].
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// Whole-request limit: a stalled response fails after this and is retried.
    pub timeout: Duration,
    pub retries: u32,
    /// First retry delay; doubled on each retry.
    pub backoff: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(120),
            retries: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

impl HttpSource {
    pub fn new(url: &str) -> Result<HttpSource, SourceError> {
        HttpSource::with_options(url, HttpOptions::default())
    }

    pub fn with_options(url: &str, o: HttpOptions) -> Result<HttpSource, SourceError> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(o.timeout)
            .build()
            .map_err(|e| SourceError::Io {
                name: url.into(),
                source: std::io::Error::other(e),
            })?;
        Ok(HttpSource {
            base: url.trim_end_matches('/').to_string(),
            client,
            retries: o.retries,
            backoff: o.backoff,
        })
    }

    fn get_once(&self, name: &str, cap: u64) -> Result<Vec<u8>, (bool, SourceError)> {
        let url = format!("{}/{name}", self.base);
        let io = |e: &dyn std::fmt::Display| SourceError::Io {
            name: url.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let resp = self.client.get(&url).send().map_err(|e| (true, io(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err((
                false,
                SourceError::NotFound {
                    name: name.into(),
                    bundle: self.base.clone(),
                },
            ));
        }
        if !status.is_success() {
            return Err((status.is_server_error(), io(&format!("HTTP {status}"))));
        }
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err((
                false,
                SourceError::TooLarge {
                    name: name.into(),
                    cap,
                },
            ));
        }
        let mut buf = Vec::new();
        resp.take(cap + 1)
            .read_to_end(&mut buf)
            .map_err(|e| (true, io(&e)))?;
        if buf.len() as u64 > cap {
            return Err((
                false,
                SourceError::TooLarge {
                    name: name.into(),
                    cap,
                },
            ));
        }
        Ok(buf)
    }
}

impl BundleSource for HttpSource {
    fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            match self.get_once(name, cap) {
                Ok(b) => return Ok(b),
                Err((retry, e)) if retry && attempt < self.retries => {
                    tracing::warn!("{e}; retrying in {} ms", delay.as_millis());
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }
    fn describe(&self) -> String {
        self.base.clone()
    }
    fn corrupt_retries(&self) -> u32 {
        2
    }
}
