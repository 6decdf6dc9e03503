//! `weft store copy`: a sled store's history moved into PostgreSQL, so a
//! team that outgrows one machine keeps its runs, tokens and the webhook
//! deliveries already seen.
//!
//! Each run is copied in one transaction (its record, steps, list pages,
//! for-each items, history, HTTP totals and, for an unfinished sync, its
//! sorted runs), so a copy cut short leaves whole runs; a run the database
//! has already is left as it is, so a copy can be run again. A run that is
//! not finished gets a queue row no worker holds: the first `weft serve` on
//! the database resumes it. Console sessions are not copied (people sign in
//! again). Stop the `weft serve` that holds the sled store first: sled is
//! opened by one process at a time.

use super::TokenError;
use super::postgres::{PgStore, RunImport};
use super::{Backend, ItemRecord, Result, RunRecord, RunStore, SledStore, StepState, StoreError};

/// Pages, and items, written per statement.
const PAGES_PER_INSERT: usize = 64;
const ITEMS_PER_GROUP: usize = 1000;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Runs copied.
    pub runs: u64,
    /// Runs the database had already (left as they are).
    pub already_there: u64,
    /// Copied runs that are not finished: queued for the workers.
    pub unfinished: u64,
    /// Tokens copied (active and revoked).
    pub tokens: u64,
    /// Active tokens not copied: the database has another active token of
    /// the name.
    pub tokens_conflicting: Vec<String>,
    /// Webhook deliveries (signatures and event ids) newly remembered.
    pub deliveries: u64,
    /// Workflow states copied (`[state.NAME]`: cursors, high-water marks).
    pub states: u64,
    /// Workflow states not copied: the database has a state of its own
    /// for the workflow, which is kept.
    pub states_kept: Vec<String>,
}

impl RunStore {
    /// Copies this sled store's runs, tokens and remembered webhook
    /// deliveries into the PostgreSQL store `target` (migrated).
    pub async fn copy_into(&self, target: &RunStore) -> Result<CopyReport> {
        let (Backend::Sled(sled), Backend::Postgres(pg)) = (&self.backend, &target.backend) else {
            return Err(StoreError::Location {
                given: format!("{self:?} to {target:?}"),
                reason: "a copy goes from a sled store to a PostgreSQL one".into(),
            });
        };
        let mut report = CopyReport::default();
        for run in self.runs().await? {
            let row = self.run_row(&run.id).await?;
            let steps = self.steps(&run.id).await?;
            let history = self.history(&run.id).await?;
            let totals = self.connection_totals(&run.id).await?;
            let Some(import) =
                pg.import(&run, row.started_by.as_deref(), &steps, &history, &totals).await?
            else {
                report.already_there += 1;
                continue;
            };
            match self.copy_parts(sled, &import, &run, &steps).await {
                Ok(()) => import.commit().await?,
                Err(e) => {
                    import.abandon().await;
                    return Err(e);
                }
            }
            report.runs += 1;
            report.unfinished += u64::from(!run.status.is_finished());
        }
        for token in self.tokens().await? {
            match target.create_token(&token).await {
                Ok(()) => report.tokens += 1,
                Err(TokenError::NameTaken(name)) => report.tokens_conflicting.push(name),
                Err(TokenError::Store(e)) => return Err(e),
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        key: format!("tokens/{}", token.id),
                        reason: e.to_string(),
                    });
                }
            }
        }
        report.deliveries = copy_deliveries(sled, pg).await?;
        // Without its state an incremental workflow would start over.
        for (workflow, state) in sled.workflow_states().await? {
            if pg.import_workflow_state(&workflow, &state).await? {
                report.states += 1;
            } else {
                report.states_kept.push(workflow);
            }
        }
        Ok(report)
    }

    /// The pages, items and sorted runs of a run's steps.
    async fn copy_parts(
        &self,
        sled: &SledStore,
        import: &RunImport,
        run: &RunRecord,
        steps: &[StepState],
    ) -> Result<()> {
        for step in steps {
            let mut pages = self.pages(&run.id, step.index).await?;
            let (mut batch, mut first) = (Vec::new(), 0u32);
            while let Some(page) = pages.next_page().await {
                batch.push(page?);
                if batch.len() == PAGES_PER_INSERT {
                    import.pages(step.index, first, &batch).await?;
                    first += PAGES_PER_INSERT as u32;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                import.pages(step.index, first, &batch).await?;
            }
            let mut items = self.items(&run.id, step.index);
            let mut group: Vec<(u64, ItemRecord)> = Vec::new();
            while let Some(item) = items.next().await {
                group.push(item?);
                if group.len() == ITEMS_PER_GROUP {
                    import.items(step.index, &group).await?;
                    group.clear();
                }
            }
            if !group.is_empty() {
                import.items(step.index, &group).await?;
            }
            if !run.status.is_finished() && step.sync.is_some() {
                let dir = sled.dir.join("scratch").join(&run.id).join(format!("{:05}", step.index));
                let failed = |e: std::io::Error| StoreError::Scratch {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                };
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(failed(e)),
                };
                for entry in entries {
                    let path = entry.map_err(failed)?.path();
                    // Only whole sorted runs (a `.partial` was never committed).
                    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                    if !name.ends_with(".jsonl") {
                        continue;
                    }
                    let bytes = tokio::fs::read(&path).await.map_err(failed)?;
                    import.sorted_run(step.index, name, &bytes).await?;
                }
            }
        }
        Ok(())
    }
}

/// Remembers in PostgreSQL the deliveries sled remembers; returns how many
/// were new there.
async fn copy_deliveries(sled: &SledStore, pg: &PgStore) -> Result<u64> {
    let mut copied = 0;
    for (key, value) in sled.delivery_entries().await? {
        let key = String::from_utf8_lossy(&key).into_owned();
        // Workflow names hold no `/`; what follows is a signature (hex) or
        // `e:` and an event id.
        let Some((workflow, rest)) = key.split_once('/') else { continue };
        let new = match (rest.strip_prefix("e:"), value.as_slice()) {
            (Some(event), [b'E', until @ ..]) => match <[u8; 8]>::try_from(until) {
                Ok(until) => {
                    pg.import_delivery(workflow, None, Some((event, u64::from_be_bytes(until))))
                        .await?
                }
                Err(_) => continue,
            },
            (Some(_), _) => continue,
            (None, value) => {
                let signed_at = match value {
                    [b'T', at @ ..] => <[u8; 8]>::try_from(at).ok().map(i64::from_be_bytes),
                    // Older stores kept the first-seen Unix ms.
                    seen if seen.len() == 8 => <[u8; 8]>::try_from(seen).ok().map(|seen| {
                        i64::try_from(u64::from_be_bytes(seen) / 1000).unwrap_or(i64::MAX)
                    }),
                    _ => None,
                };
                pg.import_delivery(workflow, Some((rest, signed_at)), None).await?
            }
        };
        copied += u64::from(new);
    }
    Ok(copied)
}

/// Totals of a copy, as one line.
impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} runs copied ({} unfinished, queued for the workers), {} there already; {} tokens; {} webhook deliveries; {} workflow states",
            self.runs,
            self.unfinished,
            self.already_there,
            self.tokens,
            self.deliveries,
            self.states
        )?;
        if !self.states_kept.is_empty() {
            write!(f, "; state kept as the database has it: {}", self.states_kept.join(", "))?;
        }
        if !self.tokens_conflicting.is_empty() {
            write!(
                f,
                "; not copied, an active token of the name exists there: {}",
                self.tokens_conflicting.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::store::postgres::scratch::{ScratchSchema, test_url};
    use crate::store::{
        ConnectionTotals, Delivery, HistoryEntry, Role, RunTrigger, Status, SyncProgress,
        TokenRecord, now_ms,
    };

    fn run(id: &str, status: Status) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow: "w".into(),
            workflow_hash: "h".into(),
            workflow_text: "[workflow]".into(),
            workflow_path: "w.toml".into(),
            inputs: serde_json::json!({"a": 1}),
            status,
            created_ms: now_ms(),
            finished_ms: status.is_finished().then(now_ms),
            error: None,
            dry_run: false,
            trigger: RunTrigger::Webhook,
            cancel_requested: false,
            resumes: 0,
            inputs_defaulted: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_sled_store_copied_into_postgres_reads_the_same_and_its_unfinished_run_resumes_there()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let Some(base) = test_url("a_sled_store_copied_into_postgres")? else { return Ok(()) };
        let dir = tempfile::tempdir()?;
        let sled = RunStore::open(dir.path())?;
        // A finished run: a list step's pages, a for-each's items, a
        // history, HTTP totals, and the webhook delivery that started it.
        let done = sled.new_run_id().await?;
        let delivery = Delivery {
            workflow: "w".into(),
            signature: "ab12".into(),
            signed_at: Some(1_700_000_000),
            event: Some(("evt_1".into(), now_ms() + 3_600_000)),
        };
        sled.create_run_by(
            &run(&done, Status::Running),
            &["list".into(), "each".into()],
            Some(&delivery),
            Some("ops"),
        )
        .await?;
        let mut list = StepState::pending("list", 0);
        list.status = Status::Succeeded;
        list.pages = 2;
        let mut log = sled.page_log(&done, &StepState::pending("list", 0)).await?;
        log.append(r#"[{"id":"a"}]"#)?;
        log.append(r#"[{"id":"b"}]"#)?;
        sled.start_commit(&done, &list, Some(&mut log)).wait().await?;
        let mut each = StepState::pending("each", 1);
        each.status = Status::Succeeded;
        each.items = 2;
        let item = |n| {
            (
                n,
                ItemRecord {
                    status: Status::Succeeded,
                    action: None,
                    id: Some(format!("i{n}")),
                    error: None,
                },
            )
        };
        sled.commit_items(&done, &each, &[item(0), item(1)]).await?;
        sled.record_action(
            &done,
            &HistoryEntry {
                at_ms: 1,
                actor: "ops".into(),
                action: "cancel requested".into(),
                detail: None,
            },
        )
        .await?;
        let totals = BTreeMap::from([(
            "stripe".to_owned(),
            ConnectionTotals {
                requests: 7,
                throttled: 1,
                retries: 2,
                waited_ms: 30,
                ..Default::default()
            },
        )]);
        sled.add_connection_totals(&done, &totals).await?;
        let mut finished = run(&done, Status::Succeeded);
        finished.created_ms = sled.run(&done).await?.created_ms;
        sled.commit_run(&finished).await?;
        // An unfinished sync with one sorted run written.
        let open = sled.new_run_id().await?;
        sled.create_run(&run(&open, Status::Running), &["sync".into()], None).await?;
        let scratch = sled.scratch_dir(&open, 0).await?;
        std::fs::write(scratch.join("source-00000.jsonl"), "sorted\n")?;
        std::fs::write(scratch.join("source-00001.partial"), "never committed\n")?;
        let mut sync = StepState::pending("sync", 0);
        sync.status = Status::Running;
        sync.sync = Some(SyncProgress { source_runs: 1, ..SyncProgress::default() });
        sled.commit_step(&open, &sync).await?;
        let token = TokenRecord {
            id: "tok_1".into(),
            name: "ops".into(),
            role: Role::Admin,
            secret_sha256: "00".into(),
            created_ms: 1,
            created_by: None,
            revoked_ms: None,
        };
        sled.create_token(&token).await?;
        let since = BTreeMap::from([("since".to_owned(), Some(serde_json::json!(1_700_000_000)))]);
        sled.edit_workflow_state("w", &since, false).await?;

        let schema = ScratchSchema::create(&base).await?;
        let pg = RunStore::open_postgres(&schema.url).await?;
        let report = sled.copy_into(&pg).await?;
        assert_eq!((report.runs, report.unfinished, report.already_there), (2, 1, 0), "{report}");
        assert_eq!((report.tokens, report.deliveries, report.states), (1, 2, 1), "{report}");
        assert_eq!(pg.workflow_state("w").await?, sled.workflow_state("w").await?);

        let ids =
            |runs: Vec<RunRecord>| runs.into_iter().map(|r| (r.id, r.status)).collect::<Vec<_>>();
        assert_eq!(ids(pg.runs().await?), ids(sled.runs().await?));
        assert_eq!(pg.run_row(&done).await?.started_by.as_deref(), Some("ops"));
        assert_eq!(
            pg.pages(&done, 0).await?.collect_all().await?,
            [r#"[{"id":"a"}]"#, r#"[{"id":"b"}]"#]
        );
        assert_eq!(pg.items(&done, 1).count().await?, 2);
        assert_eq!(pg.history(&done).await?, sled.history(&done).await?);
        assert_eq!(pg.connection_totals(&done).await?, totals);
        assert_eq!(pg.tokens().await?.len(), 1);
        // The delivery is remembered there: a replay and a redelivery of
        // the event start nothing.
        let again = pg.new_run_id().await?;
        let replay = pg.create_run(&run(&again, Status::Running), &[], Some(&delivery)).await;
        assert!(matches!(replay, Err(StoreError::Replay { .. })), "{replay:?}");
        let resent = Delivery { signature: "cd34".into(), ..delivery.clone() };
        let resent = pg.create_run(&run(&again, Status::Running), &[], Some(&resent)).await;
        assert!(matches!(resent, Err(StoreError::DuplicateEvent { .. })), "{resent:?}");

        // The unfinished run is any worker's to claim, with its sorted run.
        let worker =
            RunStore::open_postgres(&schema.url).await?.with_lease(Duration::from_secs(30));
        assert_eq!(worker.claim_runs(10).await?, std::slice::from_ref(&open));
        let there = worker.scratch_dir(&open, 0).await?;
        assert_eq!(std::fs::read_to_string(there.join("source-00000.jsonl"))?, "sorted\n");
        assert!(!there.join("source-00001.partial").exists());

        // Again: nothing copied twice.
        let report = sled.copy_into(&pg).await?;
        assert_eq!((report.runs, report.already_there, report.deliveries), (0, 2, 0), "{report}");
        assert_eq!(pg.runs().await?.len(), 2);
        Ok(())
    }
}
