//! How Drive names become keys, and Google files become exports.
//!
//! A Drive name may hold any character, and one folder may hold two items
//! of the same name. Keys are `/`-separated UTF-8, unique per object. The
//! mapping is a function of the folder's listing, so a re-run finds the
//! same keys:
//!
//! * `/` becomes `／` (U+FF0F FULLWIDTH SOLIDUS), as rclone does; control
//!   characters become their Unicode control pictures (U+2400 + code, DEL
//!   U+2421); a name that is `.` or `..` becomes `．` or `．．` (U+FF0E);
//!   an empty name becomes `＿` (U+FF3F).
//! * A Google Doc, Sheet, Slides or Drawing gets the extension of the
//!   format it is exported to (`Plan` becomes `Plan.docx`).
//! * Where several items of one folder map to the same name, the oldest
//!   (by `createdTime`) keeps it and every later one gets its file id
//!   before the extension: `report (1AbC...xyz).pdf`. Ids never change, so
//!   each keeps its key as long as the oldest one is there.
//!
//! Duplicates are found without holding a folder's names: the folder is
//! listed with `orderBy=name,createdTime`, so equal names arrive together,
//! oldest first, and only the names of the current run of
//! equal-but-for-case-and-punctuation names are kept ([`Dedupe`]).

/// The key segment of a Drive name.
pub fn segment(name: &str) -> String {
    match name {
        "" => return "\u{FF3F}".to_string(),
        "." => return "\u{FF0E}".to_string(),
        ".." => return "\u{FF0E}\u{FF0E}".to_string(),
        _ => {}
    }
    name.chars()
        .map(|c| match c {
            '/' => '\u{FF0F}',
            '\u{7F}' => '\u{2421}',
            c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}'),
            c => c,
        })
        .collect()
}

/// `name` with `(id)` before its extension (a short one after the last
/// dot) or at its end.
pub fn with_id(name: &str, id: &str) -> String {
    match name.rfind('.') {
        Some(dot)
            if dot > 0
                && (2..=6).contains(&(name.len() - dot))
                && name[dot + 1..].chars().all(|c| c.is_alphanumeric()) =>
        {
            format!("{} ({id}){}", &name[..dot], &name[dot..])
        }
        _ => format!("{name} ({id})"),
    }
}

/// The run of names one folder's listing is in, for duplicates.
#[derive(Debug, Default)]
pub struct Dedupe {
    /// The folded Drive name of the run.
    fold: String,
    /// The mapped names given out in this run.
    given: Vec<String>,
}

fn fold(name: &str) -> String {
    let f: String = name
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    if f.is_empty() { name.to_string() } else { f }
}

impl Dedupe {
    /// The key segment of the next item of the listing, named `drive_name`
    /// in Drive and `mapped` as a segment (with any export extension).
    pub fn name(&mut self, drive_name: &str, mapped: String, id: &str) -> String {
        let f = fold(drive_name);
        if f != self.fold {
            self.fold = f;
            self.given.clear();
        }
        if self.given.contains(&mapped) {
            return with_id(&mapped, id);
        }
        self.given.push(mapped.clone());
        mapped
    }
}

/// The MIME type of a folder.
pub const FOLDER: &str = "application/vnd.google-apps.folder";
/// The MIME type of a shortcut.
pub const SHORTCUT: &str = "application/vnd.google-apps.shortcut";

/// Whether `mime` is one of Google's own types (no binary content).
pub fn is_google_type(mime: &str) -> bool {
    mime.starts_with("application/vnd.google-apps.")
}

/// Export formats by extension: what `--gdrive-export` names.
pub const EXPORT_FORMATS: &[(&str, &str)] = &[
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
    ("pdf", "application/pdf"),
    ("odt", "application/vnd.oasis.opendocument.text"),
    ("ods", "application/x-vnd.oasis.opendocument.spreadsheet"),
    ("odp", "application/vnd.oasis.opendocument.presentation"),
    ("odg", "application/vnd.oasis.opendocument.graphics"),
    ("rtf", "application/rtf"),
    ("txt", "text/plain"),
    ("md", "text/markdown"),
    ("html", "text/html"),
    ("zip", "application/zip"),
    ("epub", "application/epub+zip"),
    ("csv", "text/csv"),
    ("tsv", "text/tab-separated-values"),
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("json", "application/vnd.google-apps.script+json"),
];

/// The formats exports are made in unless told otherwise, by preference:
/// Docs to docx, Sheets to xlsx, Slides to pptx, Drawings to pdf.
pub const DEFAULT_EXPORTS: &[&str] = &["docx", "xlsx", "pptx", "pdf"];

/// Checks `--gdrive-export`'s extensions; the error lists the known ones.
pub fn check_exports(exts: &[String]) -> Result<(), String> {
    for e in exts {
        if !EXPORT_FORMATS.iter().any(|(x, _)| x == e) {
            return Err(format!(
                "unknown export format {e:?} (known: {})",
                EXPORT_FORMATS
                    .iter()
                    .map(|(x, _)| *x)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// The first of `preferred` (extensions) that `offered` (MIME types the
/// file's `exportLinks` name) has: its extension and MIME type.
pub fn pick_export<'a>(
    preferred: &[String],
    mut offered: impl FnMut(&str) -> bool,
) -> Option<(&'a str, &'a str)> {
    preferred.iter().find_map(|ext| {
        EXPORT_FORMATS
            .iter()
            .find(|(x, _)| x == ext)
            .filter(|(_, mime)| offered(mime))
            .map(|(x, m)| (*x, *m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_keys_are_mapped() {
        assert_eq!(segment("a/b"), "a／b");
        assert_eq!(segment(".."), "．．");
        assert_eq!(segment("."), "．");
        assert_eq!(segment(""), "＿");
        assert_eq!(segment("tab\there"), "tab\u{2409}here");
        assert_eq!(segment("ü ok.txt"), "ü ok.txt");
    }

    #[test]
    fn duplicates_after_the_first_get_their_id() {
        let mut d = Dedupe::default();
        assert_eq!(d.name("a.txt", "a.txt".into(), "1"), "a.txt");
        assert_eq!(d.name("a.txt", "a.txt".into(), "2"), "a (2).txt");
        assert_eq!(
            d.name("A.txt", "A.txt".into(), "3"),
            "A.txt",
            "case differs"
        );
        assert_eq!(d.name("b", "b".into(), "4"), "b");
        assert_eq!(d.name("b", "b".into(), "5"), "b (5)");
        assert_eq!(with_id("archive.tar.gz", "x"), "archive.tar (x).gz");
        assert_eq!(with_id("no extension here.", "x"), "no extension here. (x)");
        assert_eq!(with_id(".hidden", "x"), ".hidden (x)");
    }

    #[test]
    fn exports_pick_the_first_offered_format() {
        let prefs: Vec<String> = DEFAULT_EXPORTS.iter().map(|s| s.to_string()).collect();
        let drawing = |m: &str| m == "application/pdf" || m == "image/png";
        assert_eq!(pick_export(&prefs, drawing).unwrap().0, "pdf");
        assert_eq!(pick_export(&prefs, |_| false), None);
        assert!(check_exports(&["docx".into(), "odt".into()]).is_ok());
        assert!(
            check_exports(&["doc".into()])
                .unwrap_err()
                .contains("known: docx")
        );
    }
}
