//! Include/exclude globs, shared by the jobs.

use anyhow::Context;
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Include/exclude selection of keys.
#[derive(Clone, Debug)]
pub struct Filter {
    include: Option<(GlobSet, GlobSet)>,
    exclude: (GlobSet, GlobSet),
}

impl Filter {
    /// Compiles the patterns; a pattern without `/` matches file names.
    pub fn new(include: &[String], exclude: &[String]) -> anyhow::Result<Self> {
        fn sets(patterns: &[String], flag: &str) -> anyhow::Result<(GlobSet, GlobSet)> {
            let (mut full, mut name) = (GlobSetBuilder::new(), GlobSetBuilder::new());
            for p in patterns {
                let glob = globset::GlobBuilder::new(p.trim_start_matches('/'))
                    .literal_separator(true)
                    .build()
                    .map(|g: Glob| g)
                    .with_context(|| format!("invalid {flag} pattern {p:?}"))?;
                if p.contains('/') {
                    full.add(glob);
                } else {
                    name.add(glob);
                }
            }
            Ok((full.build()?, name.build()?))
        }
        Ok(Filter {
            include: if include.is_empty() {
                None
            } else {
                Some(sets(include, "--include")?)
            },
            exclude: sets(exclude, "--exclude")?,
        })
    }

    /// Whether every key is selected (no patterns): callers can skip
    /// building keys.
    pub fn selects_everything(&self) -> bool {
        self.include.is_none() && self.exclude.0.is_empty() && self.exclude.1.is_empty()
    }

    /// Whether `key` is selected.
    pub fn selects(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        let hit = |(full, names): &(GlobSet, GlobSet)| full.is_match(key) || names.is_match(name);
        self.include.as_ref().is_none_or(hit) && !hit(&self.exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_full_keys_and_file_names() {
        let f = Filter::new(&["*.txt".into(), "logs/**".into()], &["secret*".into()]).unwrap();
        assert!(f.selects("a.txt"));
        assert!(
            f.selects("deep/dir/b.txt"),
            "name patterns match at any depth"
        );
        assert!(f.selects("logs/2024/x.bin"));
        assert!(!f.selects("data/x.bin"));
        assert!(!f.selects("deep/secret.txt"), "exclude wins");
        let all = Filter::new(&[], &["*.tmp".into()]).unwrap();
        assert!(all.selects("x/y.dat") && !all.selects("x/y.tmp"));
        assert!(
            Filter::new(&["a[".into()], &[])
                .unwrap_err()
                .to_string()
                .contains("--include")
        );
    }
}
