//! Where data lives: `PATH`, `file://PATH` or `s3://BUCKET[/PREFIX]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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
    },
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
                "empty location (expected a path, file://PATH or s3://BUCKET/PREFIX)".into(),
            ));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket)
                .map_err(|why| LocationError(format!("invalid S3 location {s:?}: {why}")))?;
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
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
                "unknown scheme {scheme:?} in {s:?} (supported: a local path, file://PATH, s3://BUCKET/PREFIX)"
            )));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
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
        assert_eq!("s3://my-bucket/a/b/".parse(), Ok(s3("my-bucket", "a/b")));
        assert_eq!(s3("b.x-1", "p/q").to_string(), "s3://b.x-1/p/q");
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
            ("", "empty location"),
        ] {
            let e = input.parse::<Location>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }
}
