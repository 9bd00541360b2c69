//! Where data lives: `PATH`, `file://PATH`, `s3://BUCKET[/PREFIX]` or
//! `gdrive://...` (see [`DriveLocation`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use super::gdrive::DriveLocation;

/// A parsed source or destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local path (file or directory; it need not exist for a destination).
    Local(PathBuf),
    /// A bucket and a key prefix (no leading slash; may be empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key or prefix inside the bucket, without leading or trailing `/`.
        prefix: String,
        /// Written with a trailing `/` (or the bucket alone): a prefix only,
        /// never the object of that name. Without it, a source that names
        /// an object is that object, as with rclone.
        dir: bool,
    },
    /// A Google Drive folder or file (a source only).
    GDrive(DriveLocation),
}

/// A location that cannot be parsed; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationError(String);

impl fmt::Display for LocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LocationError {}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(LocationError(
                "empty location (expected a path, file://PATH, s3://BUCKET/PREFIX or gdrive://...)"
                    .into(),
            ));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket)
                .map_err(|why| LocationError(format!("invalid S3 location {s:?}: {why}")))?;
            let trimmed = prefix.trim_matches('/');
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: trimmed.to_string(),
                dir: trimmed.is_empty() || prefix.ends_with('/'),
            });
        }
        if let Some(rest) = s.strip_prefix("gdrive://") {
            return DriveLocation::parse(rest)
                .map(Location::GDrive)
                .map_err(|why| LocationError(format!("invalid Drive location {s:?}: {why}")));
        }
        if let Some(path) = s.strip_prefix("file://") {
            if path.is_empty() {
                return Err(LocationError(format!(
                    "invalid location {s:?}: file:// needs a path"
                )));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(LocationError(format!(
                "unknown scheme {scheme:?} in {s:?} (supported: a local path, file://PATH, s3://BUCKET/PREFIX, gdrive://root/PATH, gdrive://shared/DRIVE/PATH, gdrive://id/ID, gdrive://shared-with-me/PATH)"
            )));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix, .. } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 {
                bucket,
                prefix,
                dir: true,
            } => write!(f, "s3://{bucket}/{prefix}/"),
            Location::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
            Location::GDrive(d) => write!(f, "{d}"),
        }
    }
}

impl Location {
    /// Whether a listing of this location can come in key order, so that
    /// a copy from it can be cut into key ranges and resumed after a key
    /// (a Drive walk cannot).
    pub fn lists_in_key_order(&self) -> bool {
        !matches!(self, Location::GDrive(_))
    }

    /// The path of a local location.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            Location::Local(p) => Some(p),
            _ => None,
        }
    }

    /// The bucket, when the location is all of one (no prefix).
    pub fn whole_bucket(&self) -> Option<&str> {
        match self {
            Location::S3 { bucket, prefix, .. } if prefix.is_empty() => Some(bucket),
            _ => None,
        }
    }
}

/// Why copying `src` into `dst` would read what it writes (or write over
/// its source): one lies within the other. Local paths are compared
/// resolved (symlinks, `..`), a destination that does not exist yet by its
/// nearest existing ancestor; S3 locations by bucket and key prefix.
pub fn overlap(src: &Location, dst: &Location) -> Option<String> {
    let within = |inner: &str, outer: &str| {
        outer.is_empty()
            || inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|r| r.starts_with('/'))
    };
    match (src, dst) {
        (Location::Local(s), Location::Local(d)) => {
            let s = s.canonicalize().ok()?;
            let d = resolve(d)?;
            let (ss, ds) = (s.to_str()?, d.to_str()?);
            let (ss, ds) = (ss.trim_end_matches('/'), ds.trim_end_matches('/'));
            if within(ds, ss) {
                Some(format!(
                    "the destination {} is inside the source {}: the copy would copy its own output",
                    d.display(),
                    s.display()
                ))
            } else if within(ss, ds) {
                Some(format!(
                    "the source {} is inside the destination {}: the copy would write over its source",
                    s.display(),
                    d.display()
                ))
            } else {
                None
            }
        }
        (
            Location::S3 {
                bucket: sb,
                prefix: sp,
                ..
            },
            Location::S3 {
                bucket: db,
                prefix: dp,
                ..
            },
        ) if sb == db && (within(dp, sp) || within(sp, dp)) => Some(format!(
            "{src} and {dst} overlap: one lies within the other, so the copy would read what it writes"
        )),
        _ => None,
    }
}

/// `path` made absolute and resolved (symlinks, `..`) through its nearest
/// existing ancestor; the part that does not exist yet is appended as is.
pub fn resolve(path: &std::path::Path) -> Option<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        rest.push(cur.file_name()?.to_os_string());
        cur = cur.parent()?;
    }
}

/// S3's bucket naming rules, checked before any request is made.
fn validate_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.is_empty() {
        return Err("no bucket name");
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err("bucket names are 3 to 63 characters long");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("bucket names use only lowercase letters, digits, '.' and '-'");
    }
    let first_last_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !first_last_ok(bucket.as_bytes()[0]) || !first_last_ok(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("bucket names start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
            dir: prefix.is_empty(),
        }
    }

    fn s3_dir(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
            dir: true,
        }
    }

    #[test]
    fn parses_paths_file_urls_and_s3_urls() {
        assert_eq!("data/in".parse(), Ok(Location::Local("data/in".into())));
        assert_eq!(
            "/abs dir/ü".parse(),
            Ok(Location::Local("/abs dir/ü".into()))
        );
        assert_eq!(
            "file:///tmp/x".parse(),
            Ok(Location::Local("/tmp/x".into()))
        );
        assert_eq!("s3://my-bucket".parse(), Ok(s3("my-bucket", "")));
        assert_eq!("s3://my-bucket/".parse(), Ok(s3("my-bucket", "")));
        assert_eq!(
            "s3://my-bucket/a/b/".parse(),
            Ok(s3_dir("my-bucket", "a/b"))
        );
        assert_eq!("s3://my-bucket/a/b".parse(), Ok(s3("my-bucket", "a/b")));
        assert_eq!(s3("b.x-1", "p/q").to_string(), "s3://b.x-1/p/q");
        assert_eq!(s3_dir("b.x-1", "p/q").to_string(), "s3://b.x-1/p/q/");
        let drive: Location = "gdrive://shared/Eng/a/b".parse().unwrap();
        assert_eq!(drive.to_string(), "gdrive://shared/Eng/a/b");
        assert!(matches!(drive, Location::GDrive(_)));
    }

    #[test]
    fn overlapping_sources_and_destinations_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let local = |p: PathBuf| Location::Local(p);
        let o = overlap(&local(src.clone()), &local(src.join("sub/new/out"))).unwrap();
        assert!(o.contains("inside the source"), "{o}");
        assert!(overlap(&local(src.join("sub")), &local(src.clone())).is_some());
        assert!(overlap(&local(src.clone()), &local(src.clone())).is_some());
        assert!(overlap(&local(src.clone()), &local(dir.path().join("src2"))).is_none());
        let p = |s: &str| s.parse::<Location>().unwrap();
        assert!(overlap(&p("s3://bkt/logs/"), &p("s3://bkt/logs/copy")).is_some());
        assert!(overlap(&p("s3://bkt"), &p("s3://bkt/x")).is_some());
        assert!(overlap(&p("s3://bkt/logs"), &p("s3://bkt/logs2")).is_none());
        assert!(overlap(&p("s3://bkt/logs"), &p("s3://other/logs")).is_none());
    }

    #[test]
    fn rejects_unknown_schemes_and_bad_buckets_with_the_input() {
        for (input, needle) in [
            ("gs://bucket/x", "unknown scheme \"gs\""),
            ("s3://", "no bucket name"),
            ("s3:///key", "no bucket name"),
            ("s3://ab/x", "3 to 63"),
            ("s3://My_Bucket/x", "lowercase"),
            ("s3://-bucket", "start and end"),
            ("file://", "needs a path"),
            ("gdrive://", "starts with root/"),
            ("gdrive://shared/", "shared drive's id or name"),
            ("", "empty location"),
        ] {
            let e = input.parse::<Location>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }
}
