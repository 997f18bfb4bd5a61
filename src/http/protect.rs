//! What protects a browser using the dashboard: the headers every answer carries (`add_headers`:
//! a Content-Security-Policy that allows nothing inline and no framing, `nosniff`, framing
//! denied, the referrer kept to tenure, HSTS when browsers come over HTTPS), and where tenure is
//! served (`Served`: the listener's scheme, and `--public-url` when a proxy serves it), which the
//! forms' origin check compares with and the session cookie's `Secure` follows.

use std::str::FromStr;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use url::Origin;

/// The Content-Security-Policy of every answer: scripts, styles, fetches and form targets from
/// tenure itself only, nothing inline (no `<script>` body, no `style=`, no `on...=`), images from
/// tenure or `data:`, no plugins, no `<base>`, and no page of any origin may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The headers every answer carries, whatever produced it (a page, the API, a problem, a 404, a
/// static file, the probes, metrics).
pub const HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    // For browsers without `frame-ancestors`.
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
];

/// HSTS when browsers reach tenure over HTTPS: a year, this host only (its subdomains are not
/// tenure's to speak for).
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// The router's last layer: `HEADERS` on every answer, and HSTS when `https`.
pub(super) async fn add_headers(State(https): State<bool>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    if https {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(STRICT_TRANSPORT_SECURITY));
    }
    response
}

/// Where browsers reach tenure when a proxy serves it (`--public-url`): only then are the
/// proxy's `Forwarded` / `X-Forwarded-Host` / `X-Forwarded-Proto` headers believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    url: url::Url,
}

impl FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<PublicUrl, String> {
        let url = url::Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("give an http:// or https:// URL with a host".to_owned());
        }
        Ok(PublicUrl { url })
    }
}

impl PublicUrl {
    /// The URL as given.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
}

/// How the listener is reached: over TLS or not, and behind a proxy at `public_url` or not.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// `--tls-cert`/`--tls-key`: the listener speaks HTTPS.
    pub tls: bool,
    pub public_url: Option<PublicUrl>,
}

impl Served {
    /// The listener's own scheme.
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Whether browsers reach tenure over HTTPS: the listener's TLS, or an `https://` public URL
    /// (a proxy terminating TLS). Then the session cookie is `Secure` and answers carry HSTS.
    pub fn https(&self) -> bool {
        self.tls || self.public_url.as_ref().is_some_and(|public| public.url.scheme() == "https")
    }

    /// Whether the browser says a form post comes from where tenure is served. `Sec-Fetch-Site`
    /// (which a page cannot set), when sent, must be `same-origin`; the `Origin` (or, without
    /// one, the `Referer`) must be one of `origins`: scheme, host and port. A request with
    /// neither (curl, an old browser) relies on the anti-forgery value.
    pub(super) fn same_origin(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        if let Some(site) = text("sec-fetch-site") {
            if !matches!(site, "same-origin" | "none") {
                return Err("Sec-Fetch-Site is not same-origin");
            }
        }
        let Some(claimed) = text("origin").or_else(|| text("referer")) else {
            return Ok(());
        };
        let Some(claimed) = url::Url::parse(claimed).ok().filter(|url| matches!(url.scheme(), "http" | "https")) else {
            return Err("Origin is not an http(s) origin");
        };
        if self.origins(headers).contains(&claimed.origin()) {
            Ok(())
        } else {
            Err("Origin is not where tenure is served")
        }
    }

    /// The origins tenure is served at for this request: the request's own (its `Host` on the
    /// listener's scheme); with `--public-url`, also the public URL's and the one the proxy's
    /// forwarded headers describe (`Forwarded`'s `proto`/`host`, else `X-Forwarded-Proto`/`-Host`;
    /// a scheme not told is the public URL's, a host not told the request's). Without it those headers count for nothing: anyone may send
    /// them.
    fn origins(&self, headers: &HeaderMap) -> Vec<Origin> {
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let host = text(header::HOST.as_str());
        let mut origins: Vec<Origin> = host.and_then(|host| origin(self.scheme(), host)).into_iter().collect();
        if let Some(public) = &self.public_url {
            origins.push(public.url.origin());
            let (mut proto, mut forwarded_host) = (None, None);
            // RFC 7239: the first element is what the proxy nearest the browser saw.
            if let Some(first) = text("forwarded").and_then(|value| value.split(',').next()) {
                for pair in first.split(';') {
                    if let Some((name, value)) = pair.split_once('=') {
                        let value = value.trim().trim_matches('"');
                        match name.trim().to_ascii_lowercase().as_str() {
                            "proto" => proto = Some(value),
                            "host" => forwarded_host = Some(value),
                            _ => {}
                        }
                    }
                }
            }
            let first_of = |name: &str| text(name).and_then(|value| value.split(',').next()).map(str::trim);
            let proto = proto.or_else(|| first_of("x-forwarded-proto"));
            let forwarded_host = forwarded_host.or_else(|| first_of("x-forwarded-host"));
            if proto.is_some() || forwarded_host.is_some() {
                // A proxy that does not say the scheme serves the public URL's.
                let scheme = proto.unwrap_or(public.url.scheme());
                if let Some(forwarded) = forwarded_host.or(host).and_then(|host| origin(scheme, host)) {
                    origins.push(forwarded);
                }
            }
        }
        origins
    }
}

/// The origin of `scheme://host` (host with an optional port), if both are plain: an http(s)
/// scheme and a host with nothing of a path, user or query in it.
fn origin(scheme: &str, host: &str) -> Option<Origin> {
    if !matches!(scheme, "http" | "https")
        || host.is_empty()
        || host.chars().any(|c| matches!(c, '/' | '\\' | '@' | '?' | '#') || c.is_whitespace())
    {
        return None;
    }
    url::Url::parse(&format!("{scheme}://{host}/")).ok().map(|url| url.origin())
}
