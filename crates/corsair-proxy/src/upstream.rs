//! The pooled client to the one upstream, and what its failures mean for the client.

use std::error::Error as StdError;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::{ProxyConfig, ProxyError};

/// The upstream and a keep-alive connection pool to it.
#[derive(Clone)]
pub struct Upstream {
    pub client: Client<HttpConnector, Incoming>,
    authority: Authority,
}

impl Upstream {
    /// Checks that `config.upstream` is `http://host[:port]` and builds the pool.
    pub fn new(config: &ProxyConfig) -> Result<Upstream, ProxyError> {
        let uri = &config.upstream;
        let bad = |reason| ProxyError::Upstream {
            uri: uri.to_string(),
            reason,
        };
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(bad(
                "the scheme must be http:// (the upstream is a local plain-HTTP port)",
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it must not contain userinfo"));
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(bad("it must not have a path or query"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Adds `Host` only when the request has none: the application keeps seeing the
            // host the client asked for.
            .set_host(true)
            .build(connector);
        Ok(Upstream { client, authority })
    }

    /// The absolute URI the client connects to: always the upstream, whatever the request said.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
    }
}

/// Why the upstream could not produce a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection was refused (nothing listens on the upstream port).
    Refused,
    /// The TCP connect did not complete within the connect timeout.
    ConnectTimeout,
    /// The upstream did not start its response within the upstream timeout.
    Timeout,
    /// The connection was reset or closed before a complete response head arrived.
    Reset,
    /// Anything else (a malformed response, a failed connect for another reason).
    Other,
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::ConnectTimeout | Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Refused | Failure::Reset | Failure::Other => StatusCode::BAD_GATEWAY,
        }
    }

    /// The plain-text body sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Failure::Refused => "upstream refused the connection\n",
            Failure::ConnectTimeout => "upstream connect timed out\n",
            Failure::Timeout => "upstream did not respond in time\n",
            Failure::Reset => "upstream reset the connection\n",
            Failure::Other => "upstream request failed\n",
        }
    }

    /// The `cause` label of `corsair_proxy_upstream_errors_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Other => "other",
        }
    }

    /// Classifies a client error by walking its causes for an I/O error kind or hyper's own.
    pub fn classify(err: &hyper_util::client::legacy::Error) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = err.source();
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match io.kind() {
                    ConnectionRefused => return Failure::Refused,
                    TimedOut => return Failure::ConnectTimeout,
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                        return Failure::Reset;
                    }
                    _ => {}
                }
            }
            if let Some(hyper_err) = cause.downcast_ref::<hyper::Error>()
                && (hyper_err.is_incomplete_message() || hyper_err.is_closed())
            {
                return Failure::Reset;
            }
            source = cause.source();
        }
        Failure::Other
    }
}

#[cfg(test)]
mod tests;
