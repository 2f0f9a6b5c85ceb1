//! The plain-text tables the one-shot commands print (`notifications list`, `notifications
//! backfill|audit`): left-aligned columns two spaces apart, widths counted in characters so a
//! non-ASCII merchant name or business id does not skew the columns.

/// `lines` (the header first, every line as many cells as the header) as text, one line each,
/// with no trailing spaces.
pub(crate) fn render(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_aligned_by_characters() {
        let lines = vec![
            vec!["NAME".to_string(), "N".to_string()],
            vec!["é€".to_string(), "10".to_string()],
        ];
        assert_eq!(super::render(&lines), "NAME  N\né€    10\n");
    }
}
