//! Where data lives: `PATH`, `file://PATH`, a bucket of an object store
//! (`s3://BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]`,
//! `az://CONTAINER[/PREFIX]`, the schemes rclone and object_store users
//! know) or `gdrive://...` (see [`DriveLocation`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use super::gdrive::DriveLocation;

/// A parsed source or destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local path (file or directory; it need not exist for a destination).
    Local(PathBuf),
    /// A bucket (an Azure container) and a key prefix (no leading slash;
    /// may be empty).
    Bucket {
        /// Which object store.
        cloud: Cloud,
        /// Bucket or container name.
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

/// The object stores a [`Location::Bucket`] can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cloud {
    /// Amazon S3 or an S3-compatible server.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl Cloud {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Cloud::S3 => "s3",
            Cloud::Gcs => "gs",
            Cloud::Azure => "az",
        }
    }

    /// What its buckets are called in messages.
    pub fn bucket_word(self) -> &'static str {
        match self {
            Cloud::Azure => "container",
            Cloud::S3 | Cloud::Gcs => "bucket",
        }
    }

    fn of_scheme(scheme: &str) -> Option<Cloud> {
        match scheme {
            "s3" => Some(Cloud::S3),
            "gs" => Some(Cloud::Gcs),
            "az" => Some(Cloud::Azure),
            _ => None,
        }
    }

    /// The service's naming rules for a bucket, checked before any
    /// request is made.
    fn validate(self, name: &str) -> Result<(), String> {
        let word = self.bucket_word();
        if name.is_empty() {
            return Err(format!("no {word} name"));
        }
        if !(3..=63).contains(&name.len()) {
            return Err(format!("{word} names are 3 to 63 characters long"));
        }
        let extra: &[u8] = match self {
            Cloud::S3 => b".-",
            Cloud::Gcs => b".-_",
            Cloud::Azure => b"-",
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        {
            let allowed = match self {
                Cloud::S3 => "lowercase letters, digits, '.' and '-'",
                Cloud::Gcs => "lowercase letters, digits, '.', '-' and '_'",
                Cloud::Azure => "lowercase letters, digits and '-'",
            };
            return Err(format!("{word} names use only {allowed}"));
        }
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(name.as_bytes()[0]) || !alnum(name.as_bytes()[name.len() - 1]) {
            return Err(format!("{word} names start and end with a letter or digit"));
        }
        if self == Cloud::Azure && name.contains("--") {
            return Err("container names have no two '-' in a row".into());
        }
        Ok(())
    }
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
                "empty location (expected a path, file://PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or gdrive://...)"
                    .into(),
            ));
        }
        if let Some((scheme, rest)) = s.split_once("://")
            && let Some(cloud) = Cloud::of_scheme(scheme)
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            cloud.validate(bucket).map_err(|why| {
                LocationError(format!("invalid {scheme}:// location {s:?}: {why}"))
            })?;
            let trimmed = prefix.trim_matches('/');
            return Ok(Location::Bucket {
                cloud,
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
                "unknown scheme {scheme:?} in {s:?} (supported: a local path, file://PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, gdrive://root/PATH, gdrive://shared/DRIVE/PATH, gdrive://id/ID, gdrive://shared-with-me/PATH)"
            )));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Bucket {
                cloud,
                bucket,
                prefix,
                dir,
            } => {
                write!(f, "{}://{bucket}", cloud.scheme())?;
                match (prefix.is_empty(), dir) {
                    (true, _) => Ok(()),
                    (false, true) => write!(f, "/{prefix}/"),
                    (false, false) => write!(f, "/{prefix}"),
                }
            }
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
            Location::Bucket { bucket, prefix, .. } if prefix.is_empty() => Some(bucket),
            _ => None,
        }
    }
}

/// Why copying `src` into `dst` would read what it writes (or write over
/// its source): one lies within the other. Local paths are compared
/// resolved (symlinks, `..`), a destination that does not exist yet by its
/// nearest existing ancestor; buckets by store, bucket and key prefix.
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
            Location::Bucket {
                cloud: sc,
                bucket: sb,
                prefix: sp,
                ..
            },
            Location::Bucket {
                cloud: dc,
                bucket: db,
                prefix: dp,
                ..
            },
        ) if sc == dc && sb == db && (within(dp, sp) || within(sp, dp)) => Some(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::Bucket {
            cloud: Cloud::S3,
            bucket: bucket.into(),
            prefix: prefix.into(),
            dir: prefix.is_empty(),
        }
    }

    fn s3_dir(bucket: &str, prefix: &str) -> Location {
        Location::Bucket {
            cloud: Cloud::S3,
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
        let gs: Location = "gs://my_bucket/a/".parse().unwrap();
        assert_eq!(gs.to_string(), "gs://my_bucket/a/");
        assert!(
            matches!(gs, Location::Bucket { cloud: Cloud::Gcs, ref bucket, .. } if bucket == "my_bucket")
        );
        let az: Location = "az://logs-2024/x/y".parse().unwrap();
        assert_eq!(az.to_string(), "az://logs-2024/x/y");
        assert!(matches!(
            az,
            Location::Bucket {
                cloud: Cloud::Azure,
                dir: false,
                ..
            }
        ));
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
        assert!(overlap(&p("s3://bkt/logs"), &p("gs://bkt/logs/x")).is_none());
        assert!(overlap(&p("az://bkt/logs"), &p("az://bkt/logs/x")).is_some());
    }

    #[test]
    fn rejects_unknown_schemes_and_bad_buckets_with_the_input() {
        for (input, needle) in [
            ("hdfs://bucket/x", "unknown scheme \"hdfs\""),
            (
                "gs://Bucket/x",
                "lowercase letters, digits, '.', '-' and '_'",
            ),
            ("az://my_container", "lowercase letters, digits and '-'"),
            ("az://a--b", "no two '-' in a row"),
            ("az://", "no container name"),
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
