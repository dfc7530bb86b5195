//! Reading retention policy files: TOML errors and impossible rules both come back located at
//! file:line:column with a hint.

use std::path::Path;

use super::config::{FileError, line_col, parse_toml};
use crate::domain::retention::Policy;

pub fn load(path: &Path) -> Result<Policy, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Policy, FileError> {
    let policy: Policy = parse_toml(path, text)?;
    if let Some(p) = policy.problems().into_iter().next() {
        let (line, column) = line_col(text, p.offset);
        return Err(FileError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: p.message,
        });
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_located() {
        let text = "description = \"x\"\n\n[[keep]]\nnewest = 0\n";
        let err = parse(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(
            err.starts_with("parse p.toml:3:1: [[keep]] rule 1: newest = 0 keeps nothing"),
            "{err}"
        );
        let err = parse(Path::new("p.toml"), "[[keep]]\nnewest = 3\nolder_than = \"3d\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("parse p.toml:3:1: unknown field `older_than`"), "{err}");
        let err = parse(Path::new("p.toml"), "[[keep]]\nnewest_per = \"patch\"\ncount = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml:2:14") && err.contains("patch"), "{err}");
    }

    #[test]
    fn an_invalid_tag_glob_is_located() {
        let err = parse(
            Path::new("p.toml"),
            "[protect]\ntags = [\"v[0-9\"]\n[[keep]]\nnewest = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("parse p.toml:2:8:") && err.contains("v[0-9"), "{err}");
    }

    #[test]
    fn an_empty_policy_is_refused_unless_it_says_keep_nothing() {
        for text in ["", "description = \"x\"\n", "[protect]\nhistory = 3\n"] {
            let err = parse(Path::new("p.toml"), text).unwrap_err().to_string();
            assert!(
                err.starts_with("parse p.toml:1:1: the policy has no [[keep]] rule"),
                "{err}"
            );
        }
        let p = parse(Path::new("p.toml"), "keep_nothing = true\n").unwrap();
        assert!(p.describe().iter().any(|l| l.starts_with("keep_nothing")));
        let err = parse(Path::new("p.toml"), "keep_nothing = true\n[[keep]]\nnewest = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("contradicts"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_policy_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(Path::new("p.toml"), &text);
        }

        #[test]
        fn policy_shaped_text_never_panics(
            n in proptest::num::i64::ANY,
            d in "\\PC{0,12}",
            per in "\\PC{0,8}",
            glob in "\\PC{0,12}",
        ) {
            let text = format!(
                "[[keep]]\nnewest = {n}\n[[keep]]\npushed_within = {d:?}\n[[keep]]\nnewest_per = {per:?}\ncount = {n}\n\
                 [[keep]]\ntags = [{glob:?}]\n[untagged]\nexpire_after = {d:?}\n[prereleases]\nnewest = {n}\n"
            );
            let _ = parse(Path::new("p.toml"), &text);
        }
    }
}
