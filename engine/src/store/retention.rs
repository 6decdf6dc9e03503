//! Retention: runs older than an age are removed with everything they left
//! in the store (steps, pages and their page files, for-each items, a
//! sync's scratch files, history, HTTP figures, row and index entries), so
//! a store that serves a schedule for years stays the size of its window.
//!
//! What is never removed: a run not finished (it may be resumed), a failed
//! one when asked to keep them, and the newest successful run of each
//! workflow (what `$last_success` names: pruning it would make an
//! incremental workflow start again from the beginning).

use std::collections::HashMap;
use std::path::Path;

use super::{
    MAX_PAGE, Result, RunQuery, RunStore, Status, StoreError, decode, history_prefix, index,
    step_prefix_of_run,
};

/// What a prune removed and kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Runs removed.
    pub removed: u64,
    /// Runs old enough but kept: not finished, failed (with `keep_failed`),
    /// or their workflow's newest success.
    pub kept: u64,
}

impl RunStore {
    /// Removes the finished runs created before `cutoff_ms` (Unix ms) and
    /// everything they left in the store, oldest last, a page of runs at a
    /// time; keeps unfinished runs, failed ones when `keep_failed`, and
    /// each workflow's newest successful run. Safe to stop at any point
    /// and to run again: a run's entries go before its row, so one half
    /// removed is found and finished by the next prune.
    pub async fn prune_runs(&self, cutoff_ms: u64, keep_failed: bool) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let mut newest_success: HashMap<String, Option<String>> = HashMap::new();
        let mut before = None;
        loop {
            let page = self
                .query_runs(RunQuery {
                    created_to_ms: Some(cutoff_ms),
                    before: before.clone(),
                    limit: MAX_PAGE,
                    ..RunQuery::default()
                })
                .await?;
            let mut doomed = Vec::new();
            for row in &page.rows {
                let keep = !row.status.is_finished()
                    || (keep_failed && row.status == Status::Failed)
                    || match newest_success.get(&row.workflow) {
                        Some(newest) => newest.as_deref() == Some(row.id.as_str()),
                        None => {
                            let newest = self.newest_success(&row.workflow).await?;
                            let keep = newest.as_deref() == Some(row.id.as_str());
                            newest_success.insert(row.workflow.clone(), newest);
                            keep
                        }
                    };
                if keep {
                    report.kept += 1;
                } else {
                    doomed.push(row.id.clone());
                }
            }
            if !doomed.is_empty() {
                report.removed += doomed.len() as u64;
                match &self.backend {
                    super::Backend::Sled(sled) => sled.delete_runs(doomed).await?,
                    super::Backend::Postgres(pg) => pg.delete_runs(&doomed).await?,
                }
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        Ok(report)
    }

    /// The newest successful run of `workflow` that is not a dry run.
    async fn newest_success(&self, workflow: &str) -> Result<Option<String>> {
        let mut before = None;
        loop {
            let page = self
                .query_runs(RunQuery {
                    workflow: Some(workflow.to_owned()),
                    status: Some(Status::Succeeded),
                    before,
                    limit: MAX_PAGE,
                    ..RunQuery::default()
                })
                .await?;
            if let Some(row) = page.rows.iter().find(|r| !r.dry_run) {
                return Ok(Some(row.id.clone()));
            }
            match page.next {
                Some(next) => before = Some(next),
                None => return Ok(None),
            }
        }
    }
}

impl super::SledStore {
    /// Removes these runs and everything they left: the entries of each
    /// first, its row and record last, durably; then its page and scratch
    /// files.
    pub(super) async fn delete_runs(&self, ids: Vec<String>) -> Result<()> {
        let removed = ids.clone();
        self.owner
            .write(move |t| {
                for id in &ids {
                    for tree in [&t.steps, &t.pages, &t.items] {
                        let mut batch = sled::Batch::default();
                        for key in tree.scan_prefix(step_prefix_of_run(id)).keys() {
                            batch.remove(key?);
                        }
                        tree.apply_batch(batch)?;
                    }
                    let mut batch = sled::Batch::default();
                    for key in t.history.scan_prefix(history_prefix(id)).keys() {
                        batch.remove(key?);
                    }
                    t.history.apply_batch(batch)?;
                    t.run_stats.remove(id.as_bytes())?;
                    if let Some(bytes) = t.rows.get(id.as_bytes())? {
                        // A row that does not decode still goes; its index
                        // entries are found by the run record below.
                        if let Ok(row) = decode::<index::RunRow>(id.as_bytes(), &bytes) {
                            for key in index::index_keys(&row) {
                                t.index.remove(key)?;
                            }
                        }
                    }
                    if let Some(bytes) = t.runs.get(id.as_bytes())?
                        && let Ok(run) = decode::<super::RunRecord>(id.as_bytes(), &bytes)
                    {
                        for key in index::index_keys(&index::RunRow::of(&run, None)) {
                            t.index.remove(key)?;
                        }
                    }
                    t.rows.remove(id.as_bytes())?;
                    t.runs.remove(id.as_bytes())?;
                }
                Ok(())
            })
            .await?;
        for id in &removed {
            remove_dir(&self.dir.join("pages").join(id))?;
            remove_dir(&self.dir.join("scratch").join(id))?;
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::Scratch { path: dir.display().to_string(), reason: e.to_string() })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{
        ConnectionTotals, HistoryEntry, ItemRecord, RunRecord, RunTrigger, StepState, now_ms,
    };

    const DAY_MS: u64 = 86_400_000;

    fn record(id: &str, workflow: &str, created_ms: u64, status: Status) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow: workflow.into(),
            workflow_hash: "h".into(),
            workflow_text: "[workflow]".into(),
            workflow_path: "w.toml".into(),
            inputs: serde_json::json!({}),
            status,
            created_ms,
            finished_ms: status.is_finished().then_some(created_ms + 1000),
            error: None,
            dry_run: false,
            trigger: RunTrigger::Cron,
            cancel_requested: false,
            resumes: 0,
            inputs_defaulted: Vec::new(),
        }
    }

    /// A run created `days_ago`, with a step, an item group, history and
    /// HTTP figures; on sled also a committed page (and its file) and a
    /// scratch file.
    async fn seed(
        store: &RunStore,
        seq: u64,
        workflow: &str,
        days_ago: u64,
        status: Status,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let created = now_ms() - days_ago * DAY_MS;
        let id = format!("{created:011x}-{seq:05x}");
        store
            .create_run(&record(&id, workflow, created, status), &["list".to_owned()], None)
            .await?;
        store.record_action(&id, &HistoryEntry::now("cli", "cancel", None)).await?;
        let totals = BTreeMap::from([(
            "stripe".to_owned(),
            ConnectionTotals { requests: 3, ..Default::default() },
        )]);
        store.add_connection_totals(&id, &totals).await?;
        let mut step = StepState::pending("list", 0);
        step.status = Status::Succeeded;
        let item = ItemRecord { status: Status::Succeeded, action: None, id: None, error: None };
        store.commit_items(&id, &step, &[(0, item)]).await?;
        if store.sled_dir().is_some() {
            step.pages = 1;
            store.commit_page(&id, &step, r#"[{"id":"cus_1"}]"#).await?;
            std::fs::write(store.scratch_dir(&id, 0).await?.join("run-0"), "x")?;
        }
        Ok(id)
    }

    #[tokio::test]
    async fn old_runs_go_with_everything_they_left_and_the_ones_still_needed_stay()
    -> Result<(), Box<dyn std::error::Error>> {
        const NAME: &str = "old_runs_go_with_everything_they_left_and_the_ones_still_needed_stay";
        for backend in crate::store::testing::backends(NAME).await? {
            eprintln!("{NAME}: on {}", backend.name);
            prune_on(&backend.store).await?;
        }
        Ok(())
    }

    async fn prune_on(store: &RunStore) -> Result<(), Box<dyn std::error::Error>> {
        let old_success = seed(store, 1, "w", 40, Status::Succeeded).await?;
        let old_failed = seed(store, 2, "w", 39, Status::Failed).await?;
        let old_running = seed(store, 3, "w", 38, Status::Running).await?;
        let older_success = seed(store, 4, "w", 37, Status::Succeeded).await?;
        let recent = seed(store, 5, "w", 1, Status::Succeeded).await?;
        let only_success = seed(store, 6, "lonely", 50, Status::Succeeded).await?;
        let cutoff = now_ms() - 30 * DAY_MS;

        let report = store.prune_runs(cutoff, true).await?;
        assert_eq!(report, PruneReport { removed: 2, kept: 3 });
        for gone in [&old_success, &older_success] {
            assert!(matches!(store.run(gone).await, Err(StoreError::UnknownRun(_))), "{gone}");
            assert!(store.steps(gone).await?.is_empty());
            assert!(store.history(gone).await?.is_empty());
            assert!(store.connection_totals(gone).await?.is_empty());
            assert!(store.items(gone, 0).count().await? == 0);
            if let Some(dir) = store.sled_dir() {
                assert!(!dir.join("pages").join(gone).exists(), "page files of {gone} remain");
                assert!(!dir.join("scratch").join(gone).exists(), "scratch of {gone} remains");
            }
        }
        let listed: Vec<String> = store
            .query_runs(RunQuery { limit: MAX_PAGE, ..RunQuery::default() })
            .await?
            .rows
            .into_iter()
            .map(|r| r.id)
            .collect();
        // Kept: failed (asked), unfinished, recent, and a workflow's only success.
        let mut kept =
            vec![old_failed.clone(), old_running.clone(), recent.clone(), only_success.clone()];
        kept.sort();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(listed_sorted, kept);
        for id in &kept {
            assert_eq!(store.steps(id).await?.len(), 1, "{id} keeps its steps");
        }
        // By workflow and status too: the indexes hold no pruned run.
        let by_workflow = store
            .query_runs(RunQuery {
                workflow: Some("w".into()),
                status: Some(Status::Succeeded),
                limit: MAX_PAGE,
                ..RunQuery::default()
            })
            .await?;
        assert_eq!(by_workflow.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [recent]);

        // Without --keep-failed the failed run goes too; pruning again is a no-op.
        assert_eq!(store.prune_runs(cutoff, false).await?, PruneReport { removed: 1, kept: 2 });
        assert_eq!(store.prune_runs(cutoff, false).await?, PruneReport { removed: 0, kept: 2 });
        assert!(store.run(&old_failed).await.is_err());
        assert!(store.run(&old_running).await.is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn a_store_pruned_as_it_goes_stays_the_size_of_its_window()
    -> Result<(), Box<dyn std::error::Error>> {
        // 6 rounds of 40 runs a "day"; keeping 2 days, the store holds the
        // same entries after every round once the window is full.
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let mut sizes = Vec::new();
        for round in 0..6u64 {
            for i in 0..40 {
                let days_ago = 6 - round;
                seed(&store, round * 100 + i, "w", days_ago, Status::Succeeded).await?;
            }
            let cutoff = now_ms() - (6 - round) * DAY_MS - DAY_MS - DAY_MS / 2;
            store.prune_runs(cutoff, false).await?;
            let entries = store
                .with_trees(|t| {
                    let mut n = 0;
                    for tree in [
                        &t.runs,
                        &t.steps,
                        &t.pages,
                        &t.items,
                        &t.rows,
                        &t.index,
                        &t.history,
                        &t.run_stats,
                    ] {
                        n += tree.len();
                    }
                    Ok(n)
                })
                .await?;
            let files = std::fs::read_dir(dir.path().join("pages"))?.count()
                + std::fs::read_dir(dir.path().join("scratch"))?.count();
            sizes.push((entries, files));
        }
        // Rounds 0 and 1 fill the window; from then on it does not grow.
        assert!(sizes[1].0 > sizes[0].0, "{sizes:?}");
        assert!(sizes[2..].iter().all(|s| *s == sizes[1]), "{sizes:?}");
        // A page directory and a scratch directory for each of the 80 runs kept.
        assert_eq!(sizes[5].1, 160, "{sizes:?}");
        Ok(())
    }
}
