//! Property tests over the domain parsers that take text from users or registries (selectors,
//! version tags, digests): whatever the text, they answer, they never panic. The parsers with a
//! module of their own (names, durations, config, policy, manifests, challenges) carry theirs.

use proptest::prelude::*;

use super::digest::Digest;
use super::selector::Selector;
use super::version::{VersionTag, compare_desc, parse_version, partition_tags};

proptest! {
    #[test]
    fn arbitrary_selector_text_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Selector>();
    }

    #[test]
    fn selector_shaped_text_never_panics(
        s in "(v|=|\\^|~|>=|<|sha256:|lkg|previous)?[0-9a-zA-Z.,<>=* -]{0,40}",
    ) {
        let _ = s.parse::<Selector>();
    }

    #[test]
    fn arbitrary_tags_parse_or_not_and_sort_without_panicking(tags in proptest::collection::vec("\\PC{0,30}", 0..20)) {
        for t in &tags {
            let _ = parse_version(t);
            let _ = VersionTag::parse(t);
        }
        let (mut versions, _) = partition_tags(tags.iter().map(String::as_str));
        versions.sort_by(compare_desc);
    }

    #[test]
    fn version_shaped_tags_never_panic(t in "v?[0-9]{1,20}\\.[0-9]{1,20}\\.[0-9]{1,20}(-[0-9a-zA-Z.]{0,10})?(_[0-9a-zA-Z.]{0,10})?") {
        if let Some(v) = VersionTag::parse(&t) {
            let _ = v.release();
        }
    }

    #[test]
    fn arbitrary_digest_text_never_panics(s in "\\PC{0,80}") {
        if let Ok(d) = Digest::parse(&s) {
            let _ = d.short();
        }
    }
}
