//! Small pieces shared by the subcommands' argument parsers.

/// The value after `flag`, or an error naming the flag.
pub(crate) fn value<'a>(
    args: &mut impl Iterator<Item = &'a String>,
    flag: &str,
) -> Result<&'a str, String> {
    args.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

/// `text` parsed as a number, or an error naming the flag and the text.
pub(crate) fn number<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: expected a number, found {text:?}"))
}

/// A command line as the parsers receive it (for tests).
#[cfg(test)]
pub(crate) fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_numbers_are_checked() {
        let args = ["7".to_string(), "x".to_string()];
        let mut it = args.iter();
        assert_eq!(value(&mut it, "--n"), Ok("7"));
        assert_eq!(number::<u16>("7", "--n"), Ok(7));
        assert!(number::<u16>(value(&mut it, "--n").unwrap(), "--n").is_err());
        assert_eq!(value(&mut it, "--n"), Err("--n needs a value".into()));
    }
}
