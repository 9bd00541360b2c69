//! `--route`: events of an event stream sent to several Redis streams by
//! their type and collection, e.g. posts to one stream, likes to another,
//! identity and account events to a third, the rest to `--to`'s.
//!
//! A route is `TYPE[:COLLECTION]=STREAM`:
//!
//! * `TYPE` is the entry's `t`: `#commit`, `#identity`, `#account`,
//!   `#sync`, ... for the AT Protocol; `commit`, `identity`, `account` for
//!   Jetstream; `*` for any.
//! * `COLLECTION` (commits only) is an NSID such as `app.bsky.feed.post`,
//!   or a prefix ending in `.*` such as `app.bsky.graph.*`. An AT Protocol
//!   commit matches when one of its operations is in the collection (a
//!   commit may write several); a Jetstream commit by its
//!   `commit.collection`.
//!
//! Routes are tried in the order given, and the first that matches takes
//! the event; an event no route takes goes to `--to`'s stream. Each event
//! goes to exactly one stream: never split, never copied. Every batch
//! writes all its streams in one atomic call, in source order, so the
//! streams together hold a prefix of the source, and the ingest resumes
//! after the highest position any of them holds.

use std::fmt;
use std::str::FromStr;

/// One `--route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The event type, `None` for `*`.
    kind: Option<String>,
    collection: Option<Collection>,
    /// The stream events that match go to.
    pub stream: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Collection {
    Exact(String),
    /// `app.bsky.graph.*`: held as `app.bsky.graph.`.
    Prefix(String),
}

impl Collection {
    fn matches(&self, nsid: &str) -> bool {
        match self {
            Collection::Exact(c) => nsid == c,
            Collection::Prefix(p) => nsid.starts_with(p.as_str()),
        }
    }
}

impl FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "use TYPE[:COLLECTION]=STREAM, e.g. '#commit:app.bsky.feed.post=posts'";
        let (matcher, stream) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("--route {s:?} names no stream; {usage}"))?;
        if stream.is_empty() {
            return Err(format!("--route {s:?} names no stream; {usage}"));
        }
        let (kind, collection) = match matcher.split_once(':') {
            Some((k, c)) => (k, Some(c)),
            None => (matcher, None),
        };
        if kind.is_empty() {
            return Err(format!(
                "--route {s:?} names no type (`*` for any); {usage}"
            ));
        }
        let collection = match collection {
            None => None,
            Some("") => return Err(format!("--route {s:?}: an empty collection; {usage}")),
            Some(c) => {
                let nsid = c.strip_suffix(".*").unwrap_or(c);
                let valid = nsid.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !valid {
                    return Err(format!(
                        "--route {s:?}: {c:?} is not a collection (an NSID like app.bsky.feed.post, or a prefix like app.bsky.graph.*)"
                    ));
                }
                Some(match c.strip_suffix('*') {
                    Some(prefix) => Collection::Prefix(prefix.to_string()),
                    None => Collection::Exact(c.to_string()),
                })
            }
        };
        Ok(Route {
            kind: (kind != "*").then(|| kind.to_string()),
            collection,
            stream: stream.to_string(),
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.as_deref().unwrap_or("*"))?;
        match &self.collection {
            Some(Collection::Exact(c)) => write!(f, ":{c}")?,
            Some(Collection::Prefix(p)) => write!(f, ":{p}*")?,
            None => {}
        }
        write!(f, "={}", self.stream)
    }
}

/// The routes of one ingest, and the streams they name.
#[derive(Clone, Debug, Default)]
pub struct Router {
    /// Each route with the index of its stream (1 on: 0 is `--to`'s).
    routes: Vec<(Route, u16)>,
    /// The routes' streams, each once, in the order first named.
    streams: Vec<String>,
}

impl Router {
    /// The router for `routes`, whose streams go after `default` (the
    /// target's stream, index 0; a route may name it too).
    pub fn new(routes: &[Route], default: &str) -> Result<Self, String> {
        let mut router = Router::default();
        if routes.len() > 64 {
            return Err(format!(
                "{} routes: at most 64 (each is checked for every event)",
                routes.len()
            ));
        }
        for route in routes {
            let index = if route.stream == default {
                0
            } else {
                match router.streams.iter().position(|s| *s == route.stream) {
                    Some(i) => i + 1,
                    None => {
                        router.streams.push(route.stream.clone());
                        router.streams.len()
                    }
                }
            };
            router.routes.push((route.clone(), index as u16));
        }
        Ok(router)
    }

    /// The streams routes add besides the target's, in index order (1 on).
    pub fn streams(&self) -> &[String] {
        &self.streams
    }

    /// Whether any route looks at collections (so they are worth reading).
    pub fn needs_collections(&self) -> bool {
        self.routes.iter().any(|(r, _)| r.collection.is_some())
    }

    /// The stream an event of type `kind` whose operations are in
    /// `collections` goes to.
    pub fn stream_for<'a>(
        &self,
        kind: Option<&str>,
        collections: impl Iterator<Item = &'a str> + Clone,
    ) -> u16 {
        for (route, index) in &self.routes {
            if route.kind.is_some() && route.kind.as_deref() != kind {
                continue;
            }
            match &route.collection {
                None => return *index,
                Some(c) if collections.clone().any(|nsid| c.matches(nsid)) => return *index,
                Some(_) => {}
            }
        }
        0
    }
}

/// The collection of a repository path `collection/rkey`.
pub fn collection_of(path: &str) -> &str {
    path.split_once('/').map_or(path, |(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(specs: &[&str]) -> Router {
        let routes: Vec<Route> = specs.iter().map(|s| s.parse().unwrap()).collect();
        Router::new(&routes, "rest").unwrap()
    }

    #[test]
    fn the_first_matching_route_takes_the_event() {
        let r = router(&[
            "#commit:app.bsky.feed.post=posts",
            "#commit:app.bsky.graph.*=graph",
            "#identity=accounts",
            "#account=accounts",
            "#commit:app.bsky.feed.like=rest",
        ]);
        assert_eq!(r.streams(), ["posts", "graph", "accounts"]);
        let post = ["app.bsky.feed.post"];
        assert_eq!(r.stream_for(Some("#commit"), post.iter().copied()), 1);
        let follow = ["app.bsky.graph.follow"];
        assert_eq!(r.stream_for(Some("#commit"), follow.iter().copied()), 2);
        // `app.bsky.graphs` is not under `app.bsky.graph.`.
        let near = ["app.bsky.graphs.x"];
        assert_eq!(r.stream_for(Some("#commit"), near.iter().copied()), 0);
        // A commit writing a like and a post goes by its post.
        let both = ["app.bsky.feed.like", "app.bsky.feed.post"];
        assert_eq!(r.stream_for(Some("#commit"), both.iter().copied()), 1);
        assert_eq!(r.stream_for(Some("#identity"), [].into_iter()), 3);
        assert_eq!(r.stream_for(Some("#account"), [].into_iter()), 3);
        assert_eq!(r.stream_for(Some("#sync"), [].into_iter()), 0);
        assert_eq!(r.stream_for(None, post.iter().copied()), 0);
        assert!(r.needs_collections());
        let any = router(&["*:app.bsky.feed.post=posts", "*=other"]);
        assert!(any.needs_collections());
        assert_eq!(any.stream_for(Some("commit"), post.iter().copied()), 1);
        assert_eq!(any.stream_for(Some("identity"), [].into_iter()), 2);
        assert_eq!(
            collection_of("app.bsky.feed.post/3k2a"),
            "app.bsky.feed.post"
        );
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        for (spec, words) in [
            ("#commit", "names no stream"),
            ("#commit=", "names no stream"),
            ("=posts", "names no type"),
            ("#commit:=posts", "empty collection"),
            ("#commit:app..post=posts", "is not a collection"),
            ("#commit:app.bsky.feed.post/x=posts", "is not a collection"),
            ("#commit:*=posts", "is not a collection"),
        ] {
            let e = spec.parse::<Route>().unwrap_err();
            assert!(e.contains(words), "{spec}: {e}");
        }
        let r: Route = "#commit:app.bsky.graph.*=g".parse().unwrap();
        assert_eq!(r.to_string(), "#commit:app.bsky.graph.*=g");
    }
}
