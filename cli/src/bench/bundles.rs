//! The bench's copy of the appending home's history, as a peer would send it: bundles of a
//! fixed number of ops in Lamport order, streamed from the store into a file and read back one
//! bundle at a time. Holding them in memory instead (every op decoded by `Node::ops_since`,
//! then every bundle) took the bench to ~1.2 GB at 1M ops; this way the bench holds about
//! one bundle, whatever N is.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use huskies_core::{encode_bundle_bytes, Node, OpBytes, Store, VersionVector};

/// Bytes of ops read from the store per `ops_for_sync` call while writing the file.
const READ_BYTES: usize = 4 << 20;

/// Bundles written to one file, each found by its offset and length.
pub struct BundleFile {
    path: PathBuf,
    spans: Vec<(u64, usize)>,
    /// Ops in all bundles.
    pub ops: usize,
    /// Signed bytes of all ops (bundle framing not counted).
    pub op_bytes: usize,
}

impl BundleFile {
    /// Writes every op `node` holds to `path` as bundles of `per_bundle` ops (the last may
    /// hold fewer), reading the store in bounded chunks.
    pub fn write<S: Store>(node: &Node<S>, path: &Path, per_bundle: usize) -> anyhow::Result<BundleFile> {
        ensure!(per_bundle > 0, "a bundle holds at least one op");
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        let mut written = BundleFile {
            path: path.to_path_buf(),
            spans: Vec::new(),
            ops: 0,
            op_bytes: 0,
        };
        let mut offset = 0u64;
        let mut emit =
            |ops: &mut VecDeque<OpBytes>, take: usize, written: &mut BundleFile| -> anyhow::Result<()> {
                let bundle = encode_bundle_bytes(ops.iter().take(take).map(|o| o.bytes.as_slice()));
                out.write_all(&bundle)?;
                written.spans.push((offset, bundle.len()));
                offset += bundle.len() as u64;
                written.ops += take;
                written.op_bytes += ops.iter().take(take).map(|o| o.bytes.len()).sum::<usize>();
                ops.drain(..take);
                Ok(())
            };
        let mut sent = VersionVector::default();
        let mut pending: VecDeque<OpBytes> = VecDeque::new();
        loop {
            let ops = node.ops_for_sync(&sent, READ_BYTES)?;
            if ops.is_empty() {
                break;
            }
            for op in &ops {
                if op.seq > sent.get(&op.author) {
                    sent.set(op.author, op.seq);
                }
            }
            pending.extend(ops);
            while pending.len() >= per_bundle {
                emit(&mut pending, per_bundle, &mut written)?;
            }
        }
        if !pending.is_empty() {
            let rest = pending.len();
            emit(&mut pending, rest, &mut written)?;
        }
        out.flush()?;
        Ok(written)
    }

    /// The bundles in order, each read from the file when it is reached.
    pub fn iter(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Vec<u8>>> + '_> {
        let mut file = File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        Ok(self.spans.iter().map(move |&(offset, len)| {
            let mut bundle = vec![0; len];
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut bundle)?;
            Ok(bundle)
        }))
    }
}

impl Drop for BundleFile {
    fn drop(&mut self) {
        // The bench's temporary directory goes too; this frees the space earlier.
        let _ = std::fs::remove_file(&self.path);
    }
}
