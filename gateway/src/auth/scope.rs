//! Namespace and tenant patterns of a credential: `*` alone covers everything; otherwise a
//! pattern is literal text where each `*` stands for any run of characters (`team-*`).

/// One pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern(text.trim().to_owned())
    }

    pub fn any() -> Pattern {
        Pattern("*".into())
    }

    pub fn is_any(&self) -> bool {
        self.0 == "*"
    }

    /// Glob match with `*` only: the literal pieces appear in order, the first at the
    /// start and the last at the end.
    pub fn matches(&self, text: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or("");
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let pieces: Vec<&str> = pieces.collect();
        let Some((last, middle)) = pieces.split_last() else {
            return rest.is_empty(); // no `*`: the whole text had to be `first`
        };
        for piece in middle {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// Where a credential may act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub namespaces: Vec<Pattern>,
    pub tenants: Vec<Pattern>,
}

impl Scope {
    /// Everything.
    pub fn unlimited() -> Scope {
        Scope {
            namespaces: vec![Pattern::any()],
            tenants: vec![Pattern::any()],
        }
    }

    /// One namespace, every tenant (a ServiceAccount's).
    pub fn namespace(namespace: &str) -> Scope {
        Scope {
            namespaces: vec![Pattern(namespace.to_owned())],
            tenants: vec![Pattern::any()],
        }
    }

    /// Patterns from a comma- or whitespace-separated list.
    pub fn patterns(text: &str) -> Vec<Pattern> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(Pattern::new)
            .collect()
    }

    pub fn is_unlimited(&self) -> bool {
        self.namespaces.iter().any(Pattern::is_any) && self.tenants.iter().any(Pattern::is_any)
    }

    pub fn covers_namespace(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|p| p.matches(namespace))
    }

    pub fn covers_tenant(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|p| p.matches(tenant))
    }

    pub fn all_namespaces(&self) -> bool {
        self.namespaces.iter().any(Pattern::is_any)
    }

    pub fn all_tenants(&self) -> bool {
        self.tenants.iter().any(Pattern::is_any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literally_with_stars_for_any_run() {
        let p = Pattern::new;
        assert!(p("team-a").matches("team-a"));
        assert!(!p("team-a").matches("team-ab"));
        assert!(p("team-*").matches("team-"));
        assert!(p("team-*").matches("team-blue"));
        assert!(!p("team-*").matches("teams"));
        assert!(p("*-prod").matches("pay-prod"));
        assert!(!p("*-prod").matches("pay-prod-2"));
        assert!(p("a*b*c").matches("a-x-b-y-c"));
        assert!(!p("a*b*c").matches("a-c-b"));
        assert!(!p("ab*ba").matches("aba"), "pieces may not overlap");
        assert!(p("*").matches(""));
    }

    #[test]
    fn scopes_cover_what_their_patterns_say() {
        let s = Scope {
            namespaces: Scope::patterns("team-*, ops"),
            tenants: Scope::patterns("acme"),
        };
        assert!(s.covers_namespace("team-x") && s.covers_namespace("ops"));
        assert!(!s.covers_namespace("payments"));
        assert!(s.covers_tenant("acme") && !s.covers_tenant("globex"));
        assert!(!s.is_unlimited());
        assert!(Scope::unlimited().is_unlimited());
    }
}
