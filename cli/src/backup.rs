//! Backups: `huskies init --restore FILE [--key FILE]` (a home made from an export) and
//! `huskies inspect FILE` (an export verified and shown with no home). Both are built on
//! the core: `Node::restore`, and an in-memory node (`MemoryStore`) that imports the file
//! as any node would, so what they accept is exactly what a node accepts.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use huskies_core::{check_bundle_stream, InitMode, MemoryStore, Node, NodeConfig, NodeKey};
use serde_json::{json, Value};

use crate::exec::now;
use crate::output;
use crate::render::{self, CliError, Out};

/// Opens an input file; one that cannot be read is a usage error (as for `import`).
fn open(file: &Path) -> Result<BufReader<File>, CliError> {
    let f = File::open(file).map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    Ok(BufReader::new(f))
}

/// `init --restore FILE [--key KEY]`: a new home at `root` holding the export's history.
pub(crate) fn init_restore(
    root: &Path,
    file: &Path,
    key: Option<&Path>,
    label: &str,
) -> Result<Out, CliError> {
    let key = key.map(NodeKey::load).transpose()?;
    let with_key = key.is_some();
    let mut input = open(file)?;
    let (node, report) = Node::restore(
        root,
        &mut input,
        key,
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )?;
    let cluster_name = node.cluster_name().unwrap_or_default().to_string();
    let member = node
        .members()
        .iter()
        .any(|m| m.node == node.node_id() && !m.removed);
    let next = if with_key {
        format!(
            "This home is node {} again. Before any command that writes, let it sync with the \
             cluster's other nodes (`huskies daemon --peer URL`) if there are any: ops it wrote \
             after this backup come back from them, and writing first would reuse sequence \
             numbers and fork its chain.\n",
            node.node_id().short()
        )
    } else {
        "This home has a new node key and is not a member: it holds the cluster's state for \
         reading. To write, join the cluster instead (`huskies init --join TICKET`), or \
         restore with the node's own key (--key).\n"
            .to_string()
    };
    let mut out = render::id(
        node.node_id(),
        node.cluster_id(),
        label,
        &format!(
            "restored home {} from {}: {} ops of cluster {cluster_name:?}\n{next}",
            root.display(),
            file.display(),
            report.applied,
        ),
    );
    out.json["restored"] = json!({
        "file": file.display().to_string(),
        "ops": report.applied,
        "buffered": report.buffered,
        "cluster_name": cluster_name,
        "member": member,
    });
    Ok(out)
}

/// `inspect FILE`: the file checked whole, then imported into a throwaway in-memory node
/// of its cluster, verified and described. Nothing outside a scratch directory (removed
/// afterwards) is touched.
pub(crate) fn inspect(file: &Path) -> Result<Out, CliError> {
    let mut input = open(file)?;
    let check = check_bundle_stream(&mut input)?;
    let cluster = check.cluster().ok_or_else(|| {
        CliError::usage(format!(
            "{} holds no genesis op and its ops do not name one cluster: nothing to inspect against",
            file.display()
        ))
    })?;
    input
        .seek(SeekFrom::Start(0))
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let scratch = tempfile::tempdir()?;
    let t = now();
    let mut node = Node::init_with_backend(
        scratch.path(),
        MemoryStore::new(),
        InitMode::Join { cluster },
        &mut rand_core::OsRng,
        t,
        NodeConfig::default(),
    )?;
    let report = node.import_reader(&mut input, |_, _| {})?;
    let verify = node.verify(|_| {})?;
    let stories = node.stories(None, t)?;
    let mut histories = Vec::with_capacity(stories.len());
    for s in &stories {
        histories.push(node.history(&s.id)?);
    }
    let ok = report.rejected.is_empty() && report.buffered == 0 && verify.ok;
    let reasons = render::rejection_counts(&report.rejected);

    let mut text = format!(
        "{}: {} — {} ops in {} bundles, cluster {:?} ({})\n",
        if ok { "ok" } else { "NOT OK" },
        file.display(),
        check.ops,
        check.bundles,
        node.cluster_name().unwrap_or_default(),
        cluster.short(),
    );
    text += &format!(
        "  {} ops verified and merged, {} rejected, {} waiting for missing predecessors, {} forks\n",
        report.applied,
        report.rejected.len(),
        report.buffered,
        verify.forks.len()
    );
    for (_, reason, n) in &reasons {
        text += &format!("  rejected: {n} \u{d7} {}\n", crate::human::esc(reason));
    }
    for p in &verify.problems {
        text += &format!("  problem: {}\n", crate::human::esc(p));
    }
    text += &format!(
        "\nmembers\n{}",
        render::members(&node.members(), &node.nodes(t)?).text
    );
    text += &format!(
        "\nstories\n{}",
        render::story_list(
            &stories,
            &render::ListFilter {
                stage: None,
                conflicts: false
            }
        )
        .text
    );
    for (s, h) in stories.iter().zip(&histories) {
        let created = node.story_creation(&s.id)?;
        text += &format!(
            "\nhistory of {}\n{}",
            crate::human::esc(s.id.as_str()),
            render::history(&created, h).text
        );
    }

    let stories_json: Vec<Value> = stories
        .iter()
        .zip(&histories)
        .map(|(s, h)| {
            let mut v = output::story(s);
            v["history"] = Value::Array(h.iter().map(output::transition).collect());
            v
        })
        .collect();
    let imported = render::imported(&report).json;
    Ok(Out::new(
        text,
        json!({
            "ok": ok,
            "file": file.display().to_string(),
            "bundles": check.bundles,
            "ops": check.ops,
            "cluster_id": cluster.to_hex(),
            "cluster_name": node.cluster_name(),
            "applied": report.applied,
            "buffered": report.buffered,
            "rejected": imported["rejected"],
            "rejected_reasons": imported["rejected_reasons"],
            "verify": output::verify(&verify),
            "members": node.members().iter().map(output::member).collect::<Vec<_>>(),
            "stories": stories_json,
        }),
    ))
}
