//! The distribution spec's grammar for repository names and tags, checked before any request.
//!
//! A name goes into request paths (`/v2/<name>/manifests/<tag>`), so one that is not in the
//! grammar (`x/../../v2/other`, `../app`, `App`) could address another repository or fail with a
//! misleading "no such tag". Repository: path components of lowercase alphanumerics joined by one
//! `.`, one or two `_`, or any number of `-`, separated by `/`, none empty. Tag:
//! `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.

/// The longest repository name accepted (Distribution's own limit, host excluded).
pub const MAX_REPOSITORY_LEN: usize = 255;
/// The longest tag the grammar allows.
pub const MAX_TAG_LEN: usize = 128;

/// A repository name or tag outside the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("accept repository name '{name}': {why}")]
    Repository { name: String, why: &'static str },
    #[error("accept tag '{tag}': {why}")]
    Tag { tag: String, why: &'static str },
}

/// Checks a repository name (`team/app`) against the distribution spec.
pub fn check_repository(name: &str) -> Result<(), NameError> {
    let bad = |why| {
        Err(NameError::Repository {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_REPOSITORY_LEN {
        return bad("it is longer than 255 characters");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return bad("a path component is empty (leading, trailing or doubled '/')");
        }
        if let Err(why) = check_component(component) {
            return bad(why);
        }
    }
    Ok(())
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(c: &str) -> Result<(), &'static str> {
    let bytes = c.as_bytes();
    if bytes.iter().any(|b| b.is_ascii_uppercase()) {
        return Err("it has uppercase letters (repository names are lowercase)");
    }
    if c == "." || c == ".." {
        return Err("it has a '.' or '..' path component");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if let Some(b) = bytes.iter().find(|b| !alnum(**b) && !matches!(b, b'.' | b'_' | b'-')) {
        return Err(
            if *b == b'\\' || b.is_ascii_whitespace() || b.is_ascii_control() || *b >= 0x80 {
                "it has a character outside a-z, 0-9, '.', '_', '-' and '/'"
            } else {
                "it has a character outside a-z, 0-9, '.', '_', '-' and '/' (such as ':', '@' or '%')"
            },
        );
    }
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("a path component starts or ends with a separator ('.', '_' or '-')");
    }
    // Separators between alphanumeric runs: ".", "_", "__" or one or more "-".
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err("it has separators that cannot follow each other (only '.', '_', '__' or dashes)");
        }
    }
    Ok(())
}

/// Checks a tag against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), NameError> {
    let bad = |why| {
        Err(NameError::Tag {
            tag: tag.to_string(),
            why,
        })
    };
    let Some(first) = tag.bytes().next() else {
        return bad("it is empty");
    };
    if tag.len() > MAX_TAG_LEN {
        return bad("it is longer than 128 characters");
    }
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return bad("it must start with a letter, a digit or '_'");
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("it has a character outside a-z, A-Z, 0-9, '_', '.' and '-'");
    }
    Ok(())
}

/// Whether `tag` is in the tag grammar (tags a registry lists outside it are ignored).
pub fn is_tag(tag: &str) -> bool {
    check_tag(tag).is_ok()
}

/// Serde helper: a repository name, refused at its place in the file when outside the grammar.
pub fn deserialize_repository<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(d)?;
    if let Err(NameError::Repository { why, .. } | NameError::Tag { why, .. }) = check_repository(&name) {
        return Err(serde::de::Error::custom(format!(
            "invalid repository name '{name}': {why} (lowercase path components such as \"team/app\")"
        )));
    }
    Ok(name)
}

/// Serde helper: `[target.repositories]`, each a repository name as `deserialize_repository`
/// checks it.
pub fn deserialize_repositories<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::collections::BTreeMap<String, String>>, D::Error> {
    let map = <std::collections::BTreeMap<String, String> as serde::Deserialize>::deserialize(d)?;
    for (service, name) in &map {
        if let Err(NameError::Repository { why, .. } | NameError::Tag { why, .. }) = check_repository(name) {
            return Err(serde::de::Error::custom(format!(
                "[target.repositories] {service}: invalid repository name '{name}': {why} (lowercase path \
                 components such as \"team/app\")"
            )));
        }
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn repository_names_in_the_grammar_pass() {
        for ok in [
            "app",
            "team/app",
            "a/b/c",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "v1.2",
            "bt-test/catalog-123-4",
            "0",
            "library/ubuntu",
        ] {
            assert_eq!(check_repository(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn path_tricks_and_uppercase_are_refused_as_invalid_names() {
        for bad in [
            "x/../../../v2/prn",
            "../app",
            "./app",
            "App",
            "team/App",
            "",
            "/app",
            "app/",
            "a//b",
            "a___b",
            "a._b",
            "-app",
            "app-",
            "a b",
            "a%2f..",
            "app:latest",
            "app@sha256",
            "é",
            "a\\b",
        ] {
            let err = check_repository(bad).expect_err(bad);
            assert!(err.to_string().starts_with("accept repository name"), "{err}");
        }
        assert!(check_repository(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags_follow_the_tag_grammar() {
        for ok in ["v1.2.3", "1.2.3_build.5", "latest", "_x", "last_known_good-prod", "A"] {
            assert_eq!(check_tag(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a:b", "../x", "v1+build", "é"] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        assert!(check_tag(&"a".repeat(128)).is_ok());
        assert!(check_tag(&"a".repeat(129)).is_err());
    }

    /// A hand-written reference for the repository grammar, to check the scanner against:
    /// alphanumeric ends, and every maximal run of separators is ".", "_", "__" or dashes.
    fn matches_grammar(name: &str) -> bool {
        fn alnum(ch: char) -> bool {
            ch.is_ascii_lowercase() || ch.is_ascii_digit()
        }
        fn component(c: &str) -> bool {
            let ends = c.chars().next().is_some_and(alnum) && c.chars().last().is_some_and(alnum);
            let charset = c.chars().all(|ch| alnum(ch) || matches!(ch, '.' | '_' | '-'));
            let seps = c
                .split(alnum)
                .filter(|s| !s.is_empty())
                .all(|s| s == "." || s == "_" || s == "__" || s.chars().all(|ch| ch == '-'));
            ends && charset && seps
        }
        !name.is_empty() && name.len() <= MAX_REPOSITORY_LEN && name.split('/').all(component)
    }

    proptest! {
        #[test]
        fn arbitrary_repository_text_never_panics_and_agrees_with_the_grammar(s in "\\PC{0,40}") {
            prop_assert_eq!(check_repository(&s).is_ok(), matches_grammar(&s));
        }

        #[test]
        fn near_miss_repository_names_agree_with_the_grammar(s in "[a-zA-Z0-9._/-]{0,30}") {
            prop_assert_eq!(check_repository(&s).is_ok(), matches_grammar(&s));
        }

        #[test]
        fn arbitrary_tag_text_never_panics(s in "\\PC{0,200}") {
            let ok = check_tag(&s).is_ok();
            let expected = !s.is_empty()
                && s.len() <= MAX_TAG_LEN
                && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            prop_assert_eq!(ok, expected);
        }
    }
}
