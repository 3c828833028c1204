//! Keeping credentials that travel inside URLs out of errors, logs, metrics and status.
//!
//! Webhook URLs often carry credentials: `https://user:password@host/…` or
//! `…?api_key=…&token=…`. Wherever a URL is shown, it goes through [`redact_url`] (one
//! URL) or [`redact_urls_in`] (free text that may quote URLs, e.g. a client library's
//! error): the user information becomes `***`, every query value becomes `***` (the
//! parameter names stay, they help debugging), and a fragment is dropped. Scheme, host,
//! port and path stay, so the message still says where.

/// What replaces a secret.
const MASK: &str = "***";

/// `url` with its user information and query values masked and its fragment removed.
/// Text that is not a `scheme://` URL is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            out.push_str(MASK);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let tail = tail.split('#').next().unwrap_or_default();
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(MASK);
                }
                // A bare `?token` is a value too.
                None if pair.is_empty() => {}
                None => out.push_str(MASK),
            }
        }
    }
    out
}

/// `text` with every `scheme://…` URL in it redacted by [`redact_url`]. A URL ends at
/// whitespace, a quote, `<`, `>`, `)` or a backtick (how libraries quote them).
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` just before `://`.
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')'))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..scheme_start]);
        if scheme_start == at {
            // `://` with no scheme before it: not a URL, but mask the authority anyway.
            out.push_str(&redact_url(&format!("x{}", &rest[at..end]))[1..]);
        } else {
            out.push_str(&redact_url(&rest[scheme_start..end]));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_query_values_and_fragment() {
        let cases = [
            (
                "http://user:pw@host:8080/path?api_key=abc&x=1",
                "http://***@host:8080/path?api_key=***&x=***",
            ),
            ("https://token@h/p", "https://***@h/p"),
            ("https://h/p?secret", "https://h/p?***"),
            ("https://h/p?a=1#frag", "https://h/p?a=***"),
            ("https://h/p#access_token=x", "https://h/p"),
            ("https://h", "https://h"),
            ("https://h/p?", "https://h/p?"),
            ("https://a@b@h/p", "https://***@h/p"),
            ("https://h/p/@x?y=z", "https://h/p/@x?y=***"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let text = "error sending request for url (http://u:pw@h/p?api_key=k1): \
                    POST \"https://h2/x?token=k2\" and <ftp://a:b@c/>, plain text";
        let got = redact_urls_in(text);
        for secret in ["pw", "k1", "k2", "a:b"] {
            assert!(!got.contains(secret), "{secret}: {got}");
        }
        assert_eq!(
            got,
            "error sending request for url (http://***@h/p?api_key=***): \
             POST \"https://h2/x?token=***\" and <ftp://***@c/>, plain text"
        );
        assert_eq!(redact_urls_in("no urls here"), "no urls here");
        assert_eq!(redact_urls_in("://u:p@h"), "://***@h");
        // Multi-byte text around URLs is kept intact.
        assert_eq!(redact_urls_in("é http://h/?q=ü é"), "é http://h/?q=*** é");
    }
}
