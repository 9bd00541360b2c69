//! The command line, and the only module that knows clap. Flags follow
//! rclone and aws-cli habits. Each subcommand's arguments turn into the
//! library's own options (`CopyOptions`, `PurgeOptions`, ...), whose
//! `Default`s are the flags' defaults, as ripgrep's `hiargs` turns flags
//! into its libraries' builders; no job sees a flag.
//!
//! Doc comments here are clap's help text, written for a terminal: their
//! brackets (`[:PORT]`) are syntax, not links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use headroom_governor::ByteSize;

use crate::jobs::ForegroundOptions;
use crate::jobs::copy::CopyOptions;
use crate::jobs::ingest::IngestOptions;
use crate::jobs::purge::PurgeOptions;
use crate::serve::ServeOptions;
use crate::store::bucket::S3Config;
use crate::store::gdrive::{CredentialsConfig, DriveConfig};
use crate::telemetry;

/// Move data under a memory ceiling that holds by construction.
///
/// headroom admits work by bytes, not by workers: give it a budget (or let
/// it read the container's memory limit) and it runs as fast as that budget
/// allows.
#[derive(Debug, Parser)]
#[command(name = "headroom", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand understands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Memory budget for buffers, e.g. 512MiB, 2GiB, 300MB, 1.5G. Default:
    /// HEADROOM_MEMORY, else derived from the container's memory limit
    /// (cgroup), else a quarter of physical memory.
    #[arg(long, global = true, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<ByteSize>,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// Takes HEADROOM_MEMORY when `--memory` was not given. Read here, not
    /// by clap, so that a bad value in the environment does not stop a
    /// command whose `--memory` overrides it.
    pub fn memory_from_env(&mut self) -> Result<(), String> {
        if self.memory.is_none()
            && let Ok(v) = std::env::var("HEADROOM_MEMORY")
            && !v.trim().is_empty()
        {
            self.memory = Some(v.parse().map_err(|e| format!("HEADROOM_MEMORY: {e}"))?);
        }
        Ok(())
    }
}

/// How logs and reports are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormat> for telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => telemetry::LogFormat::Text,
            LogFormat::Json => telemetry::LogFormat::Json,
        }
    }
}

impl GlobalArgs {
    /// How a job in the foreground reports, with its `--progress-interval`.
    pub fn foreground(&self, progress_interval: humantime::Duration) -> ForegroundOptions {
        ForegroundOptions {
            memory: self.memory,
            log_format: self.log_format.into(),
            progress_interval: progress_interval.into(),
        }
    }
}

/// The default of every `--progress-interval`.
fn default_progress_interval() -> humantime::Duration {
    crate::jobs::DEFAULT_PROGRESS_INTERVAL.into()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy files or objects from SRC to DST, skipping what is already
    /// there, within the memory budget.
    ///
    /// SRC and DST are local paths, file://PATH or s3://BUCKET/PREFIX (gs://, az://); SRC
    /// may also be Google Drive (gdrive://root/PATH, gdrive://shared/DRIVE/PATH,
    /// gdrive://id/ID, gdrive://shared-with-me/PATH). A directory or prefix
    /// is copied recursively into DST; a single file or object is copied
    /// into DST as a directory (like `rclone copy`).
    Copy(Box<CopyArgs>),
    /// Make DST hold what SRC holds: copy, then delete what DST has and SRC
    /// does not (like `rclone sync`).
    ///
    /// Deletes nothing when any object failed to copy, stops deleting at
    /// the first sign that SRC's listing is incomplete, and with
    /// --max-delete N deletes nothing when more than N would go. Keys the
    /// filters do not select are left alone on both sides. Constant memory:
    /// the two listings are merged in key order, never held.
    Sync(Box<SyncArgs>),
    /// Compare SRC and DST without changing either (like `rclone check`):
    /// print `- KEY` (missing from DST), `+ KEY` (only in DST), `* KEY`
    /// (different) and `! KEY` (unreadable); exit 1 on any.
    ///
    /// Keys on both sides are compared by size and modification time, or
    /// with --checksum by MD5 where both sides can tell. Constant memory:
    /// the two listings are merged in key order, never held.
    Check(Box<CheckArgs>),
    /// Delete files older than a cut-off from a directory tree or an S3
    /// prefix, in constant memory however many files there are.
    ///
    /// Never follows symlinks (a matching symlink itself is deleted, never
    /// its target) and stays on the target's filesystem. Refuses `/` and
    /// the home directory without --force.
    Purge(Box<PurgeArgs>),
    /// Append a stream of events to a Redis stream, with backpressure from
    /// the stream back to the source.
    ///
    /// SOURCE is a WebSocket URL (ws://, wss://; one event per frame) or
    /// `-` for standard input (one event per line). While the stream holds
    /// --high-water entries or more, writing pauses and so does reading:
    /// the WebSocket's TCP window closes, a pipe fills. An event leaves
    /// memory only after Redis acknowledged it.
    Ingest(Box<IngestArgs>),
    /// Run copy tasks behind an HTTP API and a web dashboard, with their
    /// state in a database (SQLite file by default, or PostgreSQL).
    ///
    /// Open http://127.0.0.1:8080 for the dashboard; the API is described
    /// at /api/openapi.json.
    Serve(Box<ServeArgs>),
    /// Show the memory plan: the detected limit, the budget headroom would
    /// use, the circuit breaker's thresholds and current usage.
    Memory(MemoryArgs),
    /// An S3 endpoint that encrypts objects client-side on their way to an
    /// upstream bucket and decrypts them on the way back, in bounded
    /// memory.
    ///
    /// Clients sign requests with a credential from the key file (SigV4,
    /// presigned URLs, aws-chunked bodies). The upstream's credentials come
    /// from the AWS environment, as for `copy`. `headroom proxy keygen`
    /// writes a key file.
    Proxy(Box<ProxyArgs>),
}

/// Arguments of `headroom proxy`.
#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub action: Option<ProxyAction>,

    /// Address clients connect to.
    #[arg(long, default_value_t = crate::proxy::ProxyOptions::default().listen, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// The upstream S3 endpoint, e.g. `http://127.0.0.1:9000` or
    /// `https://s3.eu-west-1.amazonaws.com`.
    #[arg(long, required = true, value_name = "URL")]
    pub upstream: Option<String>,

    /// The key file (see `headroom proxy keygen`); it must be readable by
    /// its owner only.
    #[arg(long, required = true, value_name = "FILE")]
    pub keys: Option<std::path::PathBuf>,

    /// Connections open at once at most; more wait to be accepted.
    #[arg(long, default_value_t = crate::proxy::ProxyOptions::default().max_connections, value_name = "N")]
    pub max_connections: usize,

    /// Upstream region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub upstream_region: Option<String>,

    /// Virtual-hosted-style addressing upstream (bucket.host) instead of
    /// path style.
    #[arg(long)]
    pub upstream_virtual_hosted: bool,

    /// How long the upstream may stay silent within a request (no answer,
    /// no bytes read) before the request fails, e.g. 60s, 5m. Not a
    /// deadline: a GET streams for as long as its client reads.
    #[arg(long, default_value_t = crate::store::bucket::DEFAULT_REQUEST_TIMEOUT.into(), value_name = "DURATION")]
    pub upstream_timeout: humantime::Duration,
}

/// `headroom proxy` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProxyAction {
    /// Print a new key file to standard output: one client credential and
    /// a fresh key-encryption key. Redirect it to a file and chmod 600.
    Keygen {
        /// The access key id clients will sign with.
        #[arg(long, value_name = "ID")]
        access_key: String,
        /// Its secret (16 characters or more).
        #[arg(long, value_name = "SECRET")]
        secret_key: String,
    },
    /// Key rotation: wrap every object's data key again under the key
    /// file's current KEK, by server-side copies onto themselves (the data
    /// is not read or changed). Run it after making a new KEK current;
    /// remove an old KEK from the file only when rewrap reports no object
    /// left under it.
    Rewrap(RewrapArgs),
}

/// Arguments of `headroom proxy rewrap`.
#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The key file.
    #[arg(long, value_name = "FILE")]
    pub keys: std::path::PathBuf,
    /// The upstream S3 endpoint (default: AWS_ENDPOINT_URL_S3,
    /// AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Upstream region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub upstream_region: Option<String>,
    /// Only this bucket (repeatable; default: every bucket listed).
    #[arg(long, value_name = "NAME")]
    pub bucket: Vec<String>,
    /// Count what would be rewrapped; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl RewrapArgs {
    /// The rewrap's options.
    pub fn options(&self) -> crate::proxy::rewrap::RewrapOptions {
        crate::proxy::rewrap::RewrapOptions {
            upstream: S3Config {
                endpoint: self.upstream.clone(),
                region: self.upstream_region.clone(),
                ..S3Config::default()
            },
            keys: self.keys.clone(),
            buckets: self.bucket.clone(),
            dry_run: self.dry_run,
        }
    }
}

impl ProxyArgs {
    /// The proxy's options (when no subcommand was given).
    pub fn options(&self) -> crate::proxy::ProxyOptions {
        crate::proxy::ProxyOptions {
            listen: self.listen,
            upstream: S3Config {
                endpoint: self.upstream.clone(),
                region: self.upstream_region.clone(),
                virtual_hosted: self.upstream_virtual_hosted,
                request_timeout: self.upstream_timeout.into(),
                ..S3Config::default()
            },
            keys: self.keys.clone().unwrap_or_default(),
            max_connections: self.max_connections,
        }
    }
}

/// Arguments of `headroom copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// What to copy: a path, file://PATH, s3://BUCKET/PREFIX (gs://, az://) or gdrive://...
    pub src: crate::store::Location,

    /// Where to: a directory path, file://PATH or s3://BUCKET/PREFIX (gs://, az://).
    pub dst: crate::store::Location,

    /// Show what would be copied and the totals; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Decide what is up to date by content (MD5) instead of size and
    /// modification time, where both sides can tell.
    #[arg(long, short = 'c')]
    pub checksum: bool,

    /// Copy only keys matching this glob (repeatable). A pattern without
    /// `/` matches the file name at any depth.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Skip keys matching this glob (repeatable); wins over --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// A ceiling on transfers in flight; the memory budget still rules and
    /// the adaptive controller picks the number below it.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Multipart part size (5MiB..5GiB). Default: 8 MiB, less on small
    /// budgets, more for objects that would need over 10,000 parts.
    #[arg(long, value_name = "SIZE")]
    pub part_size: Option<headroom_governor::ByteSize>,

    /// Attempts after the first for each read, part or upload.
    #[arg(long, default_value_t = crate::jobs::copy::DEFAULT_RETRIES, value_name = "N")]
    pub retries: u32,

    /// S3 to S3: stream every byte through headroom instead of having S3
    /// copy it (CopyObject, UploadPartCopy): for buckets of different
    /// accounts, or to re-encrypt through `headroom proxy`.
    #[arg(long)]
    pub no_server_side: bool,

    /// Server-side copies larger than this are multipart (UploadPartCopy
    /// in --part-size parts, 512 MiB by default); at most 5GiB.
    #[arg(long, default_value_t = ByteSize(crate::transfer::DEFAULT_COPY_CUTOFF), value_name = "SIZE")]
    pub copy_cutoff: ByteSize,

    /// How often to report progress, e.g. 2s, 500ms.
    #[arg(long, default_value_t = default_progress_interval(), value_name = "DURATION")]
    pub progress_interval: humantime::Duration,

    #[command(flatten)]
    pub s3: S3Args,

    #[command(flatten)]
    pub gdrive: DriveArgs,
}

/// Arguments of `headroom sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub copy: CopyArgs,

    /// Delete nothing when more than N objects would be deleted (counted
    /// first, in a listing pass of its own).
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
}

/// Arguments of `headroom check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What should be there: a path, file://PATH, s3://BUCKET/PREFIX (gs://, az://) or gdrive://...
    pub src: crate::store::Location,

    /// What to check: a path, file://PATH or s3://BUCKET/PREFIX (gs://, az://).
    pub dst: crate::store::Location,

    /// Compare content (MD5) instead of size and modification time, where
    /// both sides can tell (local files are read; S3 ETags of single-part
    /// uploads are MD5s).
    #[arg(long, short = 'c')]
    pub checksum: bool,

    /// Check only keys matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Leave out keys matching this glob (repeatable); wins over --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Attempts after the first for each request.
    #[arg(long, default_value_t = crate::jobs::copy::DEFAULT_RETRIES, value_name = "N")]
    pub retries: u32,

    #[command(flatten)]
    pub s3: S3Args,

    #[command(flatten)]
    pub gdrive: DriveArgs,
}

impl CheckArgs {
    /// The options of the listings and comparisons (a copy's, unused ones
    /// at their defaults).
    pub fn options(&self) -> CopyOptions {
        CopyOptions {
            checksum: self.checksum,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            retries: self.retries,
            s3: self.s3.config(),
            gdrive: self.gdrive.config(),
            ..CopyOptions::default()
        }
    }
}

/// Google Drive flags (for a gdrive:// source).
#[derive(Debug, Args)]
pub struct DriveArgs {
    /// The Drive API's base URL (paths below it as Google's:
    /// /drive/v3/files ...). Default: HEADROOM_GDRIVE_ENDPOINT, else
    /// `https://www.googleapis.com`.
    #[arg(long, value_name = "URL")]
    pub gdrive_endpoint: Option<String>,

    /// A credentials file: a service-account key, an authorized-user file
    /// (gcloud) or an OAuth token (rclone). Default:
    /// GOOGLE_OAUTH_ACCESS_TOKEN (a ready token), else
    /// GOOGLE_APPLICATION_CREDENTIALS.
    #[arg(long, value_name = "FILE")]
    pub gdrive_credentials: Option<std::path::PathBuf>,

    /// With a service-account key: the user to act as (domain-wide
    /// delegation), e.g. alice@example.com.
    #[arg(long, value_name = "EMAIL")]
    pub gdrive_impersonate: Option<String>,

    /// The OAuth client an rclone token was issued to.
    #[arg(long, env = "HEADROOM_GDRIVE_CLIENT_ID", value_name = "ID")]
    pub gdrive_client_id: Option<String>,

    /// Its secret.
    #[arg(
        long,
        env = "HEADROOM_GDRIVE_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub gdrive_client_secret: Option<String>,

    /// Formats Google Docs, Sheets, Slides and Drawings are exported to,
    /// by preference: each file gets the first its type offers (its
    /// extension is added to the key).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "docx,xlsx,pptx,pdf",
        value_name = "EXT,..."
    )]
    pub gdrive_export: Vec<String>,

    /// Pass shortcuts over instead of copying what they point to.
    #[arg(long)]
    pub gdrive_skip_shortcuts: bool,
}

impl DriveArgs {
    fn config(&self) -> DriveConfig {
        DriveConfig {
            endpoint: self.gdrive_endpoint.clone(),
            credentials: CredentialsConfig {
                file: self.gdrive_credentials.clone(),
                impersonate: self.gdrive_impersonate.clone(),
                client_id: self.gdrive_client_id.clone(),
                client_secret: self.gdrive_client_secret.clone(),
            },
            exports: self.gdrive_export.clone(),
            skip_shortcuts: self.gdrive_skip_shortcuts,
        }
    }
}

/// S3 connection flags; the AWS environment variables are the defaults.
#[derive(Debug, Args, Clone)]
pub struct S3Args {
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else
    /// AWS). Plain http:// is allowed only when the endpoint says so.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Virtual-hosted-style addressing (bucket.host) instead of path style.
    #[arg(long)]
    pub s3_virtual_hosted: bool,

    /// Timeout of one S3 request, e.g. 60s, 5m.
    #[arg(long, default_value_t = crate::store::bucket::DEFAULT_REQUEST_TIMEOUT.into(), value_name = "DURATION")]
    pub s3_timeout: humantime::Duration,
}

impl S3Args {
    fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            virtual_hosted: self.s3_virtual_hosted,
            request_timeout: self.s3_timeout.into(),
            ..S3Config::default()
        }
    }
}

impl CopyArgs {
    /// The copy's options.
    pub fn options(&self) -> CopyOptions {
        CopyOptions {
            dry_run: self.dry_run,
            checksum: self.checksum,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            concurrency: self.concurrency,
            part_size: self.part_size.map(|p| p.0),
            retries: self.retries,
            s3: self.s3.config(),
            gdrive: self.gdrive.config(),
            server_side: !self.no_server_side,
            copy_cutoff: self.copy_cutoff.0,
        }
    }
}

impl PurgeArgs {
    /// The purge's options (`--simulate-latency` is not one: it is for
    /// benchmarks, and passed beside them).
    pub fn options(&self) -> PurgeOptions {
        PurgeOptions {
            dry_run: self.dry_run,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            remove_empty_dirs: self.remove_empty_dirs,
            concurrency: self.concurrency,
            cross_filesystems: self.cross_filesystems,
            force: self.force,
            s3: self.s3.config(),
        }
    }
}

/// Arguments of `headroom purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// A directory (local, NFS, EFS; or file://PATH) or s3://BUCKET/PREFIX (gs://, az://).
    pub target: crate::store::Location,

    /// Delete files last modified longer ago than this: 30d, 12h, 90m,
    /// 1w. Required.
    #[arg(long, visible_alias = "min-age", value_parser = crate::jobs::purge::parse_age, value_name = "DURATION")]
    pub older_than: Duration,

    /// Delete nothing; report how many files and bytes would go, the oldest
    /// and newest matched, and how long the real run would take.
    #[arg(long)]
    pub dry_run: bool,

    /// Consider only paths matching this glob (repeatable). A pattern
    /// without `/` matches the file name at any depth.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Never delete paths matching this glob (repeatable); wins over
    /// --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Remove directories left empty by the purge (never the target).
    #[arg(long)]
    pub remove_empty_dirs: bool,

    /// Metadata calls (stat, unlink) in flight at most; raise it for
    /// high-latency filesystems such as NFS/EFS. Default 32.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Descend into directories on other filesystems (mount points) too.
    #[arg(long)]
    pub cross_filesystems: bool,

    /// Allow purging `/` or the home directory.
    #[arg(long)]
    pub force: bool,

    /// Benchmarking only: sleep this long before every metadata call, to
    /// stand in for a high-latency filesystem (scripts/bench-purge.sh).
    #[arg(long, hide = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub simulate_latency: Option<Duration>,

    /// How often to report progress, e.g. 2s, 500ms.
    #[arg(long, default_value_t = default_progress_interval(), value_name = "DURATION")]
    pub progress_interval: humantime::Duration,

    #[command(flatten)]
    pub s3: S3Args,
}

/// Arguments of `headroom ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// ws://HOST[:PORT]/PATH, wss://..., or `-` for standard input.
    #[arg(long, value_name = "SOURCE")]
    pub from: crate::jobs::ingest::Source,

    /// redis://[USER@]HOST[:PORT][/DB]/STREAM. The password is best given
    /// by HEADROOM_REDIS_PASSWORD or --redis-password-file, not in the URL
    /// (command lines are visible to every local user).
    /// (Parsed by the job, not here: a parse error must not repeat the
    /// password the URL may hold.)
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// A file holding the Redis password (default: HEADROOM_REDIS_PASSWORD).
    #[arg(long, value_name = "PATH")]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// Events per batch (one atomic script call appends a batch).
    #[arg(long, default_value_t = IngestOptions::default().batch_size, value_name = "N")]
    pub batch_size: usize,

    /// Batches in flight on the Redis connection at once. Each batch
    /// lands only after the one before it did, so order and exactly-once
    /// hold at any depth; 1 waits for each answer before the next batch.
    #[arg(long, default_value_t = IngestOptions::default().pipeline, value_name = "N")]
    pub pipeline: usize,

    /// Bytes per batch at most (a single larger event goes alone).
    #[arg(long, default_value_t = IngestOptions::default().batch_bytes, value_name = "SIZE")]
    pub batch_bytes: ByteSize,

    /// Send a batch that is not full after this long.
    #[arg(long, default_value_t = IngestOptions::default().flush_interval.into(), value_name = "DURATION")]
    pub flush_interval: humantime::Duration,

    /// Trim the stream to about this many entries on every XADD
    /// (`MAXLEN ~ N`). Default: no trimming.
    #[arg(long, value_name = "N")]
    pub maxlen: Option<u64>,

    /// Pause writing (and so reading) while the stream holds this many
    /// entries or more; resume when a consumer has trimmed it.
    #[arg(long, value_name = "N")]
    pub high_water: Option<u64>,

    /// Events read but not yet acknowledged by Redis, at most.
    #[arg(long, default_value_t = IngestOptions::default().max_in_flight, value_name = "N")]
    pub max_in_flight: usize,

    /// The largest event accepted (a WebSocket message or a line); a
    /// larger one is an error, never truncated.
    #[arg(long, default_value_t = IngestOptions::default().max_event_size, value_name = "SIZE")]
    pub max_event_size: ByteSize,

    /// The stream entry's field that holds the event.
    #[arg(long, default_value_t = IngestOptions::default().field, value_name = "NAME")]
    pub field: String,

    /// What the events are: `lines` (opaque: a line or a WebSocket message
    /// each), `atproto` (the AT Protocol event stream,
    /// com.atproto.sync.subscribeRepos: DAG-CBOR frames, stored under the
    /// stream ID 0-SEQ with fields `t` and `seq`, resumed after the
    /// stream's last seq with `?cursor=`) or `jetstream` (Jetstream's JSON
    /// events, stored under the ID MS-US of their `time_us`, resumed from
    /// the stream's last `time_us`).
    #[arg(long, value_enum, default_value_t = crate::jobs::ingest::Format::Lines)]
    pub format: crate::jobs::ingest::Format,

    /// With --format atproto or jetstream: the cursor to start from when
    /// the Redis stream holds none of the source's events yet (default:
    /// live). Once it holds some, the stream's own last event is where
    /// every start resumes.
    #[arg(long, value_name = "N")]
    pub start_cursor: Option<u64>,

    /// With --format atproto or jetstream: send events of a type, and of
    /// commits to a collection, to another stream in the same database:
    /// TYPE[:COLLECTION]=STREAM, e.g. '#commit:app.bsky.feed.post=posts',
    /// '#commit:app.bsky.graph.*=graph', '#identity=accounts' (Jetstream's
    /// types are commit, identity, account; `*` is any type). Repeatable;
    /// the first route that matches takes the event, and what none takes
    /// goes to --to's stream. Batches write every stream at once, so the
    /// streams stay in source order together and the ingest resumes after
    /// the highest position any holds.
    #[arg(long = "route", value_name = "TYPE[:COLLECTION]=STREAM")]
    pub routes: Vec<crate::jobs::ingest::route::Route>,

    /// With --format atproto: store each frame as received (`frame`) or
    /// its body as JSON (`json`).
    #[arg(long, value_enum, default_value_t = crate::jobs::ingest::AtprotoStore::Frame)]
    pub atproto_store: crate::jobs::ingest::AtprotoStore,

    /// WebSocket only: on reconnect, add this query parameter with the
    /// sequence number of the last event Redis acknowledged, e.g.
    /// `cursor` gives ws://host/path?cursor=1234.
    #[arg(long, value_name = "NAME")]
    pub cursor_param: Option<String>,

    /// The numeric top-level JSON field of an event that holds its
    /// sequence number (used with --cursor-param; events at or below the
    /// last one read are dropped as replays).
    #[arg(long, default_value_t = IngestOptions::default().sequence_field, value_name = "NAME")]
    pub sequence_field: String,

    /// Give up when Redis has refused every write for this long.
    #[arg(long, default_value_t = IngestOptions::default().redis_retry_for.into(), value_name = "DURATION")]
    pub redis_retry_for: humantime::Duration,

    /// Give up when the WebSocket cannot be reconnected for this long.
    #[arg(long, default_value_t = IngestOptions::default().reconnect_for.into(), value_name = "DURATION")]
    pub reconnect_for: humantime::Duration,

    /// How often to report progress, e.g. 2s, 500ms.
    #[arg(long, default_value_t = default_progress_interval(), value_name = "DURATION")]
    pub progress_interval: humantime::Duration,
}

/// Arguments of `headroom serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs a token.
    #[arg(long, default_value_t = ServeOptions::default().listen, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// The task database: a SQLite file path (created if missing),
    /// sqlite:PATH, or postgres://USER:PASSWORD@HOST/DB.
    #[arg(
        long,
        default_value_t = ServeOptions::default().db,
        env = "HEADROOM_DB",
        value_name = "URL"
    )]
    pub db: String,

    /// A file holding the bearer token every API request needs (default:
    /// HEADROOM_TOKEN, else a token generated at the first start and kept
    /// in headroom.token beside the database, mode 0600).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,

    /// A directory local task paths may be in (repeatable). None: tasks
    /// may use S3 locations only, so the service cannot be made to read or
    /// write local files it was not given.
    #[arg(long, value_name = "DIR")]
    pub allow_path: Vec<std::path::PathBuf>,

    /// A host name requests may be addressed to, besides IP addresses and
    /// localhost (repeatable); other Host or Origin headers are refused, so
    /// a web page cannot reach the service through DNS rebinding.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,

    /// Connections open at once at most; more wait to be accepted.
    #[arg(long, default_value_t = ServeOptions::default().max_connections, value_name = "N")]
    pub max_connections: usize,

    /// Tasks running at once; the rest wait in the queue.
    #[arg(long, default_value_t = ServeOptions::default().max_running, value_name = "N")]
    pub max_running: usize,

    /// Tasks that were running when the service stopped become
    /// `interrupted` (resume them with POST /api/tasks/{id}/resume)
    /// instead of resuming at start.
    #[arg(long)]
    pub no_resume: bool,

    /// Google credentials a copy task from gdrive:// may name by NAME
    /// (its `gdrive_credentials`), e.g. migrator=/etc/headroom/sa.json
    /// (repeatable). A task never carries a secret; one that names none
    /// uses this process's GOOGLE_OAUTH_ACCESS_TOKEN or
    /// GOOGLE_APPLICATION_CREDENTIALS.
    #[arg(long, value_name = "NAME=FILE", value_parser = parse_named_file)]
    pub gdrive_credentials: Vec<(String, std::path::PathBuf)>,

    /// This replica's id among the services on one PostgreSQL database
    /// (default: host name and process id; give each replica its own).
    #[arg(long, env = "HEADROOM_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,

    /// How long a task's lease lasts unless renewed (every second): how
    /// long a task of a replica that died waits before another takes it
    /// over.
    #[arg(long, default_value_t = crate::serve::tasks::DEFAULT_LEASE_TTL.into(), value_name = "DURATION")]
    pub lease_ttl: humantime::Duration,

    /// A copy task is cut into shards of this many keys (in key order),
    /// which replicas run in parallel; a shard is also cut once its keys
    /// hold --shard-bytes.
    #[arg(long, default_value_t = crate::serve::tasks::DEFAULT_SHARD_OBJECTS, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_objects: u64,

    /// See --shard-objects.
    #[arg(long, default_value_t = ByteSize(crate::serve::tasks::DEFAULT_SHARD_BYTES), value_name = "SIZE")]
    pub shard_bytes: ByteSize,

    /// The Drive API's base URL for tasks (default:
    /// HEADROOM_GDRIVE_ENDPOINT, else `https://www.googleapis.com`).
    #[arg(long, value_name = "URL")]
    pub gdrive_endpoint: Option<String>,
}

/// `NAME=FILE`.
fn parse_named_file(s: &str) -> Result<(String, std::path::PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), file.into()))
        }
        _ => Err(format!("{s:?} is not NAME=FILE")),
    }
}

impl IngestArgs {
    /// The ingest's options.
    pub fn options(&self) -> IngestOptions {
        IngestOptions {
            redis_password_file: self.redis_password_file.clone(),
            batch_size: self.batch_size,
            pipeline: self.pipeline,
            batch_bytes: self.batch_bytes,
            flush_interval: self.flush_interval.into(),
            maxlen: self.maxlen,
            high_water: self.high_water,
            max_in_flight: self.max_in_flight,
            max_event_size: self.max_event_size,
            field: self.field.clone(),
            cursor_param: self.cursor_param.clone(),
            sequence_field: self.sequence_field.clone(),
            redis_retry_for: self.redis_retry_for.into(),
            reconnect_for: self.reconnect_for.into(),
            format: self.format,
            atproto_store: self.atproto_store,
            start_cursor: self.start_cursor,
            routes: self.routes.clone(),
        }
    }
}

impl ServeArgs {
    /// The service's options.
    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            listen: self.listen,
            db: self.db.clone(),
            token_file: self.token_file.clone(),
            allow_path: self.allow_path.clone(),
            allow_host: self.allow_host.clone(),
            max_connections: self.max_connections,
            max_running: self.max_running,
            resume: !self.no_resume,
            gdrive: crate::serve::tasks::DriveAccess {
                endpoint: self.gdrive_endpoint.clone(),
                credentials: self.gdrive_credentials.iter().cloned().collect(),
            },
            replica_id: self.replica_id.clone(),
            lease_ttl: self.lease_ttl.into(),
            shard_objects: self.shard_objects,
            shard_bytes: self.shard_bytes.0.max(1),
        }
    }
}

/// Arguments of `headroom memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {}
