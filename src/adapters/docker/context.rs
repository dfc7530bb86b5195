//! The build context of the Git fallback and `backtrack build`: which files go (Docker's
//! `.dockerignore` rules, through the `ignore` crate's gitignore matcher with every pattern
//! anchored at the context root, as Docker anchors them; `.git` never goes; the Dockerfile and
//! `.dockerignore` always go, as Docker sends them), and the tar of them streamed to the engine in
//! chunks from a thread, never held whole in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::build::BuildError;

/// One path of the context, relative to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub rel: PathBuf,
    pub dir: bool,
}

/// The `.dockerignore` of `context` as a matcher. Docker matches each pattern against the whole
/// path from the context root (`*.md` is only the root's, `**/*.md` any), `!` re-includes, the
/// last matching line wins; a leading `/` or `./` changes nothing.
fn dockerignore(context: &Path) -> Result<Gitignore, BuildError> {
    let err = |message: String| BuildError::Context {
        path: context.join(".dockerignore"),
        message,
    };
    let mut b = GitignoreBuilder::new(context);
    let text = match std::fs::read_to_string(context.join(".dockerignore")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e.to_string())),
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (neg, pat) = match line.strip_prefix('!') {
            Some(rest) => ("!", rest.trim()),
            None => ("", line),
        };
        let pat = pat.trim_start_matches("./").trim_start_matches('/');
        if pat.is_empty() {
            continue;
        }
        b.add_line(None, &format!("{neg}/{pat}"))
            .map_err(|e| err(format!("pattern '{line}': {e}")))?;
    }
    b.build().map_err(|e| err(e.to_string()))
}

/// Every path that goes into the context, parents before children, sorted.
pub fn entries(context: &Path, dockerfile: &Path) -> Result<Vec<Entry>, BuildError> {
    let err = |path: &Path, message: String| BuildError::Context {
        path: path.to_path_buf(),
        message,
    };
    let ignore = dockerignore(context)?;
    let always = [dockerfile.to_path_buf(), PathBuf::from(".dockerignore")];
    let mut out = Vec::new();
    let mut stack = vec![context.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut listed: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(&dir, e.to_string()))?;
        listed.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in listed {
            let path = e.path();
            let rel = path
                .strip_prefix(context)
                .map_err(|x| err(&path, x.to_string()))?
                .to_path_buf();
            let is_dir = e.file_type().map_err(|x| err(&path, x.to_string()))?.is_dir();
            if rel == Path::new(".git") {
                continue;
            }
            let kept = always.contains(&rel) || !ignore.matched_path_or_any_parents(&rel, is_dir).is_ignore();
            if is_dir {
                // A directory is walked even when it is excluded: a `!` line may take a file in it back.
                stack.push(path);
                if kept {
                    out.push(Entry { rel, dir: true });
                }
            } else if kept {
                out.push(Entry { rel, dir: false });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    // A file taken back from an excluded directory needs its directory entries in the tar.
    let mut dirs: std::collections::BTreeSet<PathBuf> = out.iter().filter(|e| e.dir).map(|e| e.rel.clone()).collect();
    let mut parents = Vec::new();
    for e in &out {
        for p in e.rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
            if dirs.insert(p.to_path_buf()) {
                parents.push(Entry {
                    rel: p.to_path_buf(),
                    dir: true,
                });
            }
        }
    }
    out.extend(parents);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A `Write` that hands 64 KiB chunks to the engine's request body.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading"))
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The tar of `entries`, produced on a thread of its own and streamed in chunks: memory stays
/// at a few chunks whatever the context's size. A file that cannot be read ends the stream with
/// that error.
pub fn tar_stream(
    context: &Path,
    entries: Vec<Entry>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let context = context.to_path_buf();
    std::thread::spawn(move || {
        let errors = tx.clone();
        let mut builder = tar::Builder::new(Chunks {
            tx,
            buf: Vec::with_capacity(CHUNK),
        });
        builder.follow_symlinks(false);
        let result = (|| -> std::io::Result<()> {
            for e in &entries {
                let path = context.join(&e.rel);
                if e.dir {
                    builder.append_dir(&e.rel, &path)?;
                } else {
                    builder
                        .append_path_with_name(&path, &e.rel)
                        .map_err(|x| std::io::Error::new(x.kind(), format!("{}: {x}", e.rel.display())))?;
                }
            }
            builder.into_inner()?.flush()
        })();
        if let Err(e) = result {
            let _ = errors.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str], dockerignore: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        if !dockerignore.is_empty() {
            std::fs::write(dir.path().join(".dockerignore"), dockerignore).unwrap();
        }
        dir
    }

    fn files(dir: &Path) -> Vec<String> {
        entries(dir, Path::new("Dockerfile"))
            .unwrap()
            .into_iter()
            .filter(|e| !e.dir)
            .map(|e| e.rel.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn dockerignore_follows_dockers_rules() {
        let all = [
            "Dockerfile",
            "README.md",
            "docs/guide.md",
            "src/main.rs",
            "target/debug/app",
            "logs/a.log",
            "logs/keep.log",
            ".git/HEAD",
            "secrets/key.pem",
        ];
        type Case<'a> = (&'a str, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "",
                &[
                    "Dockerfile",
                    "README.md",
                    "docs/guide.md",
                    "logs/a.log",
                    "logs/keep.log",
                    "secrets/key.pem",
                    "src/main.rs",
                    "target/debug/app",
                ],
            ),
            // `*.md` is the root's only (Docker anchors patterns), `**/*.md` any depth
            (
                "*.md\n",
                &[
                    "Dockerfile",
                    "docs/guide.md",
                    "logs/a.log",
                    "logs/keep.log",
                    "secrets/key.pem",
                    "src/main.rs",
                    "target/debug/app",
                ],
            ),
            (
                "**/*.md\n",
                &[
                    "Dockerfile",
                    "logs/a.log",
                    "logs/keep.log",
                    "secrets/key.pem",
                    "src/main.rs",
                    "target/debug/app",
                ],
            ),
            // a directory takes its contents; `!` takes one file back, the last line wins
            (
                "target\nlogs\n!logs/keep.log\n/secrets/\n# comment\n",
                &[
                    "Dockerfile",
                    "README.md",
                    "docs/guide.md",
                    "logs/keep.log",
                    "src/main.rs",
                ],
            ),
            (
                "./logs/*.log\n!logs/keep.log\nlogs/keep.log\n",
                &[
                    "Dockerfile",
                    "README.md",
                    "docs/guide.md",
                    "secrets/key.pem",
                    "src/main.rs",
                    "target/debug/app",
                ],
            ),
            // the Dockerfile and .dockerignore always go
            ("*\n!src\n", &[".dockerignore", "Dockerfile", "src/main.rs"]),
        ];
        for (ignore, want) in cases {
            let dir = tree(&all, ignore);
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            if !ignore.is_empty() && !want.contains(&".dockerignore".to_string()) {
                want.push(".dockerignore".into());
            }
            want.sort();
            assert_eq!(files(dir.path()), want, ".dockerignore {ignore:?}");
        }
    }

    #[test]
    fn the_tar_streams_in_chunks_and_holds_every_entry() {
        let dir = tree(&["Dockerfile", "a/b.txt"], "");
        std::fs::write(dir.path().join("big.bin"), vec![7u8; 300 * 1024]).unwrap();
        let list = entries(dir.path(), Path::new("Dockerfile")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let chunks: Vec<Bytes> = rt.block_on(async {
            use futures::StreamExt;
            tar_stream(dir.path(), list).map(|c| c.unwrap()).collect().await
        });
        assert!(chunks.len() > 4, "streamed in chunks, not one buffer");
        assert!(chunks.iter().all(|c| c.len() <= 2 * CHUNK));
        let whole: Vec<u8> = chunks.concat();
        let mut archive = tar::Archive::new(&whole[..]);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["Dockerfile", "a", "a/b.txt", "big.bin"]);
    }
}
