//! Operator broadcasts (SPEC §3.5): `PUT /v1/broadcasts/<id>` with body
//! `version=<v>` and `Authorization: Bearer <admin token>`.
//!
//! A broadcast is tiny operator state that every shard needs, so it is kept
//! outside the per-UAID WALs: one file per broadcast in `<data-dir>/broadcasts/`
//! (written atomically and synced before the 200), loaded by every shard at
//! start; a change is applied on the accepting shard and sent to the others
//! over the rings. A cluster node keeps them in Redis instead
//! (`cluster.rs`), where every shard of every node reads them once a second.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use herald_engine::push::{errno, HttpResponse};
use herald_engine::ua::{is_broadcast_id, is_broadcast_version};

use crate::admin_token;
use crate::ctx::Ctx;
use crate::shard::RingMsg;

fn directory(data_dir: &Path) -> PathBuf {
    data_dir.join("broadcasts")
}

/// File names are the id in hex: ids may contain `/`.
fn file_name(id: &str) -> String {
    id.bytes().map(|byte| format!("{byte:02x}")).collect()
}

fn id_from_file_name(name: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..name.len())
        .step_by(2)
        .map(|index| {
            name.get(index..index + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect();
    String::from_utf8(bytes?)
        .ok()
        .filter(|id| is_broadcast_id(id))
}

/// Every stored broadcast; files that do not parse are skipped with a warning.
pub fn load(data_dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(directory(data_dir)) else {
        return Vec::new();
    };
    let mut broadcasts = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = id_from_file_name(&name);
        let version = fs::read_to_string(entry.path())
            .ok()
            .map(|text| text.trim().to_owned());
        match (id, version) {
            (Some(id), Some(version)) if is_broadcast_version(&version) => {
                broadcasts.push((id, version))
            }
            _ => tracing::warn!(file = %name, "ignoring unreadable broadcast file"),
        }
    }
    broadcasts
}

fn store(data_dir: &Path, id: &str, version: &str) -> std::io::Result<()> {
    let directory = directory(data_dir);
    fs::create_dir_all(&directory)?;
    let target = directory.join(file_name(id));
    let temporary = directory.join(format!("{}.tmp", file_name(id)));
    let mut file = fs::File::create(&temporary)?;
    file.write_all(version.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, &target)?;
    fs::File::open(&directory)?.sync_all()
}

pub async fn set(
    ctx: &Rc<Ctx>,
    id: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let config = &ctx.shared.config;
    if let Err(refusal) = admin_token::check(
        config.admin_token.as_deref(),
        authorization,
        "broadcasts are disabled",
    ) {
        return refusal;
    }
    if !is_broadcast_id(id) {
        return HttpResponse::error(
            400,
            errno::BAD_REQUEST,
            "broadcast ids are 1-128 characters of A-Z a-z 0-9 _ - . /",
        );
    }
    let version = form_urlencoded::parse(body)
        .find(|(key, _)| key == "version")
        .map(|(_, value)| value.into_owned())
        .filter(|version| is_broadcast_version(version));
    let Some(version) = version else {
        return HttpResponse::error(
            400,
            errno::INVALID_BODY,
            "body must be version=<1-128 printable characters>",
        );
    };
    let stored = match &ctx.cluster {
        Some(cluster) => cluster
            .store_broadcast(id, &version)
            .await
            .map_err(|error| error.to_string()),
        None => store(&config.data_dir, id, &version).map_err(|error| error.to_string()),
    };
    if let Err(error) = stored {
        tracing::error!(%error, id, "cannot store broadcast");
        return HttpResponse::error(503, errno::STORAGE_FAILED, "cannot store the broadcast");
    }
    ctx.with_driver(|driver| driver.on_broadcast(id, &version));
    for shard in (0..config.shards).filter(|shard| *shard != ctx.index) {
        let message = RingMsg::Broadcast {
            id: id.to_owned(),
            version: version.clone(),
        };
        if ctx.senders.send_to(shard, message).await.is_err() {
            tracing::warn!(shard, id, "broadcast ring closed");
        }
    }
    HttpResponse::json(200, "{}".to_owned())
}

/// Cluster mode: applies the cluster's broadcasts to this shard once a
/// second, for as long as the shard runs (a version it already has is a
/// no-op; Redis out of reach is tried again on the next round).
pub async fn follow_cluster(ctx: Rc<Ctx>) {
    let Some(cluster) = &ctx.cluster else {
        return;
    };
    loop {
        if let Ok(broadcasts) = cluster.broadcasts().await {
            ctx.with_driver(|driver| {
                for (id, version) in &broadcasts {
                    driver.on_broadcast(id, version);
                }
            });
        }
        glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_ids_with_slashes() {
        let id = "remote-settings/monitor_changes";
        assert_eq!(id_from_file_name(&file_name(id)).as_deref(), Some(id));
        assert_eq!(id_from_file_name("zz"), None, "not hex");
        assert_eq!(id_from_file_name("616"), None, "odd length");
        assert_eq!(
            id_from_file_name("6120"),
            None,
            "a space is not an id character"
        );
    }
}
