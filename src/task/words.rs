//! The word list the synthetic tasks draw from, embedded so generation needs no files.
//!
//! `data/words.txt` is Debian's `wamerican-small` (SCOWL size 35) list, filtered once:
//! lowercase ASCII only (which drops proper nouns and apostrophes), 3–12 letters, roman
//! numerals and vowel-less abbreviations removed, and inflected forms dropped when their
//! stem is in the list (plurals, -ed, -ing, -er, -est, -ly, -ness), leaving ~15k base words.
//! Sorted, one per line.

use std::sync::OnceLock;

const RAW: &str = include_str!("../../data/words.txt");

/// The words in file order. Parsed once; blank lines are skipped so a trailing newline or an
/// edited file cannot introduce an empty "word".
pub fn words() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        RAW.lines()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect()
    })
}
