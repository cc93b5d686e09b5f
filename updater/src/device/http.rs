//! Bundles over HTTP(S): each file is a GET under the bundle URL, size-capped (Content-Length
//! checked first, then the body read with a hard limit), retried with exponential backoff; a
//! run of packed chunks is one range request (206 with the exact range, or refused).
//!
//! The client is ureq (rustls with ring): blocking, so each install worker reads its own
//! keep-alive connection from the shared pool directly, with no runtime thread between them,
//! and its buffers are fixed (a 64 KiB read buffer per connection) where an async client's grow
//! per connection with the transfer (the install's memory bound is per worker).

use crate::bundle::source::{BundleSource, SourceError};
use std::io::Read;
use std::time::Duration;

pub struct HttpSource {
    base: String,
    agent: ureq::Agent,
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
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(o.timeout))
            // Statuses are judged here (404: missing, 5xx: retried), not turned into errors.
            .http_status_as_error(false)
            // A kept-alive connection for every worker an install may run.
            .max_idle_connections(crate::install::MAX_PARALLEL)
            .max_idle_connections_per_host(crate::install::MAX_PARALLEL)
            .input_buffer_size(64 << 10)
            .output_buffer_size(16 << 10)
            .build()
            .into();
        Ok(HttpSource {
            base: url.trim_end_matches('/').to_string(),
            agent,
            retries: o.retries,
            backoff: o.backoff,
        })
    }

    /// One GET; the error says whether trying again may help.
    fn get_once(&self, name: &str, cap: u64) -> Result<Vec<u8>, (bool, SourceError)> {
        let url = format!("{}/{name}", self.base);
        let io = |e: &dyn std::fmt::Display| SourceError::Io {
            name: url.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let too_large = || SourceError::TooLarge {
            name: name.into(),
            cap,
        };
        let resp = self.agent.get(&url).call().map_err(|e| (true, io(&e)))?;
        let status = resp.status();
        if status == 404 {
            return Err((false, self.not_found(name)));
        }
        if !status.is_success() {
            return Err((status.is_server_error(), io(&format!("HTTP {status}"))));
        }
        let declared = resp.body().content_length();
        if declared.is_some_and(|n| n > cap) {
            return Err((false, too_large()));
        }
        // ureq's own limit is off (u64::MAX): the capped read is the one limit.
        let body = resp.into_body().into_with_config().reader();
        kiln_io::read_capped(body, cap).map_err(|e| match e {
            kiln_io::CappedError::TooLarge { .. } => (false, too_large()),
            kiln_io::CappedError::Io(e) => (true, io(&e)),
        })
    }
}

impl HttpSource {
    /// A 404: the bundle has no such file (not retried).
    fn not_found(&self, name: &str) -> SourceError {
        SourceError::NotFound {
            name: name.into(),
            bundle: self.base.clone(),
        }
    }

    /// One range request; the error says whether trying again may help.
    fn range_once(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, (bool, SourceError)> {
        let url = format!("{}/{name}", self.base);
        let io = |e: &dyn std::fmt::Display| SourceError::Io {
            name: format!("{url} bytes {offset}+{len}"),
            source: std::io::Error::other(e.to_string()),
        };
        let last = offset + len.max(1) - 1;
        let resp = self
            .agent
            .get(&url)
            .header("Range", format!("bytes={offset}-{last}"))
            .call()
            .map_err(|e| (true, io(&e)))?;
        let status = resp.status();
        if status == 404 {
            return Err((false, self.not_found(name)));
        }
        // 206 with exactly the range asked for; a server that ignores ranges (200, the whole
        // file) is refused rather than read from the start.
        let range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let whole_file = status == 200 && offset == 0;
        if status != 206 && !whole_file {
            return Err((
                status.is_server_error(),
                io(&format!(
                    "HTTP {status} to a range request (ranges are needed for a packed bundle)"
                )),
            ));
        }
        if status == 206 && !range.starts_with(&format!("bytes {offset}-{last}/")) {
            return Err((
                false,
                io(&format!(
                    "Content-Range {range:?} is not the range asked for"
                )),
            ));
        }
        if status == 206 && resp.body().content_length().is_some_and(|n| n != len) {
            return Err((false, io(&"Content-Length is not the range's length")));
        }
        let body = resp.into_body().into_with_config().limit(len).reader();
        Ok(Box::new(body))
    }

    /// Retries `once` with backoff while its error says retrying may help.
    fn retrying<T>(
        &self,
        mut once: impl FnMut() -> Result<T, (bool, SourceError)>,
    ) -> Result<T, SourceError> {
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            match once() {
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
}

impl BundleSource for HttpSource {
    fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
        self.retrying(|| self.get_once(name, cap))
    }
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        self.retrying(|| self.range_once(name, offset, len))
    }
    fn exists(&self, name: &str) -> Result<bool, SourceError> {
        let url = format!("{}/{name}", self.base);
        self.retrying(|| {
            let resp = self.agent.head(&url).call().map_err(|e| {
                (
                    true,
                    SourceError::Io {
                        name: url.clone(),
                        source: std::io::Error::other(e.to_string()),
                    },
                )
            })?;
            match resp.status().as_u16() {
                200..=299 => Ok(true),
                // Missing; or, from hosts that answer a missing key with 403 (private
                // buckets) or refuse HEAD (405, 501), unknown: the one-byte range decides.
                404 => Ok(false),
                403 | 405 | 501 => match self.range_once(name, 0, 1) {
                    Ok(_) => Ok(true),
                    Err((_, SourceError::NotFound { .. })) => Ok(false),
                    Err((_, SourceError::Io { .. })) => Ok(false),
                    Err(e) => Err(e),
                },
                s => Err((
                    s >= 500,
                    SourceError::Io {
                        name: url.clone(),
                        source: std::io::Error::other(format!("HTTP {s} to HEAD")),
                    },
                )),
            }
        })
    }
    fn describe(&self) -> String {
        self.base.clone()
    }
    fn corrupt_retries(&self) -> u32 {
        2
    }
}
