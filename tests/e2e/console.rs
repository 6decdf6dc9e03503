//! The authenticated API and the web console of `weft serve`, over real
//! HTTP on loopback with a real sled store and real components: tokens and
//! roles, sign-in sessions and their CSRF tokens, the `Host`/`Origin`
//! rule, the open loopback mode, TLS, escaping of hostile values, and a
//! bounded burst. (The console in a real browser: `browser.rs`.)

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::Value;
use weft::serve::auth;
use weft::serve::{RunningServer, ServeConfig};
use weft::store::{Role, RunStore};
use weft_sandbox::limits::FaultConfig;

use super::serve::{config, post_json, start_with, stripe, upsert_workflow, wait_finished};
use super::support::TestResult;

/// Makes tokens in the store at `state` (before a server holds it).
pub(super) async fn tokens(
    state: &std::path::Path,
    wanted: &[(&str, Role)],
) -> TestResult<Vec<String>> {
    let store = RunStore::open(state)?;
    let mut made = Vec::new();
    for (name, role) in wanted {
        let issued = auth::issue(name, *role, Some("test".into()));
        store.create_token(&issued.record).await?;
        made.push(issued.token.expose().to_owned());
    }
    Ok(made)
}

/// A form post, as a browser sends it (`application/x-www-form-urlencoded`).
trait FormBody {
    fn form_body(self, fields: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, fields: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.header("content-type", "application/x-www-form-urlencoded").body(body)
    }
}

fn client() -> TestResult<reqwest::Client> {
    Ok(reqwest::Client::builder().redirect(Policy::none()).build()?)
}

/// A client that sends `token` as its bearer on every request.
pub(super) fn bearer_client(token: &str) -> TestResult<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .default_headers(
            [(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?)]
                .into_iter()
                .collect(),
        )
        .build()?)
}

/// The id of the run a start request answered 202 for.
async fn started_run(started: reqwest::Response) -> TestResult<String> {
    assert_eq!(started.status(), 202);
    let run: Value = serde_json::from_slice(&started.bytes().await?)?;
    Ok(run["run_id"].as_str().ok_or("run id")?.to_owned())
}

/// A browser's session: its cookie and the CSRF token its pages carry.
struct Session {
    cookie: String,
    csrf: String,
}

/// The value of the hidden CSRF field in a page.
fn csrf_of(page: &str) -> Option<String> {
    let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_owned())
}

async fn sign_in(client: &reqwest::Client, base: &str, token: &str) -> TestResult<Session> {
    let response = client
        .post(format!("{base}/login"))
        .form_body(&[("token", token), ("next", "/")])
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .ok_or("no session cookie")?
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let page = client.get(format!("{base}/")).header("cookie", &cookie).send().await?;
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().await?).ok_or("no CSRF field on the runs page")?;
    Ok(Session { cookie, csrf })
}

async fn server_with(
    state: &std::path::Path,
    files: &std::path::Path,
    base_url: &str,
) -> TestResult<RunningServer> {
    let wf = upsert_workflow(files, "manual", base_url, 4096)?;
    start_with(state, ServeConfig { workflows: vec![wf], ..config()? }).await
}

#[tokio::test]
async fn the_api_takes_bearer_tokens_and_each_role_does_only_what_it_may() -> TestResult {
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(
        state.path(),
        &[("watcher", Role::Viewer), ("ops", Role::Operator), ("boss", Role::Admin)],
    )
    .await?;
    let (viewer, operator, admin) = (&made[0], &made[1], &made[2]);
    let server = server_with(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;

    let anonymous = client.get(format!("{base}/api/runs")).send().await?;
    assert_eq!(anonymous.status(), 401, "no token");
    assert!(anonymous.headers().get("www-authenticate").is_some());
    assert_eq!(
        client.get(format!("{base}/api/runs")).bearer_auth(viewer).send().await?.status(),
        200
    );
    let start = format!("{base}/api/workflows/manual/runs");
    let body = r#"{"email": "roles@example.com"}"#;
    assert_eq!(
        post_json(&client, start.clone(), body).bearer_auth(viewer).send().await?.status(),
        403,
        "a viewer cannot start a run"
    );
    let started = post_json(&client, start.clone(), body).bearer_auth(operator).send().await?;
    let run = started_run(started).await?;
    let authed = bearer_client(viewer)?;
    let detail = wait_finished(&authed, &base, &run).await?;
    assert_eq!(detail["status"], "succeeded", "{detail:#}");
    assert_eq!(detail["history"][0]["actor"], "ops", "who started it: {detail:#}");
    assert_eq!(detail["connections"]["stripe"]["requests"].as_u64().map(|n| n >= 1), Some(true));
    // The run's page shows its HTTP and its plugin calls per connection.
    let watcher = sign_in(&client, &base, viewer).await?;
    let page = client
        .get(format!("{base}/runs/{run}"))
        .header("cookie", &watcher.cookie)
        .send()
        .await?
        .text()
        .await?;
    let calls = page.split("id=\"plugin-calls\"").nth(1).ok_or("a plugin calls table")?;
    assert!(calls.contains("<td>stripe</td><td>upsert</td><td>1</td>"), "{page}");
    assert!(page.contains("<td>stripe</td><td>stripe</td>"), "connection and plugin: {page}");
    let cancel = post_json(&client, format!("{base}/api/runs/{run}/cancel"), "")
        .bearer_auth(operator)
        .send()
        .await?;
    assert_eq!(cancel.status(), 200, "a finished run stays as it is");

    assert_eq!(
        client.get(format!("{base}/api/tokens")).bearer_auth(operator).send().await?.status(),
        403,
        "only an admin sees tokens"
    );
    let listed = client.get(format!("{base}/api/tokens")).bearer_auth(admin).send().await?;
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await?;
    assert!(listed.contains("\"watcher\"") && !listed.contains("sha256"), "{listed}");
    let created =
        post_json(&client, format!("{base}/api/tokens"), r#"{"name": "ci-bot", "role": "viewer"}"#)
            .bearer_auth(admin)
            .send()
            .await?;
    assert_eq!(created.status(), 201);
    let created: Value = serde_json::from_slice(&created.bytes().await?)?;
    let bot = created["token"].as_str().ok_or("token")?.to_owned();
    assert_eq!(
        client.get(format!("{base}/api/runs")).bearer_auth(&bot).send().await?.status(),
        200
    );
    let revoked = post_json(&client, format!("{base}/api/tokens/ci-bot/revoke"), "")
        .bearer_auth(admin)
        .send()
        .await?;
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        client.get(format!("{base}/api/runs")).bearer_auth(&bot).send().await?.status(),
        401,
        "a revoked token opens nothing"
    );
    assert_eq!(
        client
            .get(format!("{base}/api/runs"))
            .bearer_auth(viewer)
            .header("host", "rebound.example.com")
            .send()
            .await?
            .status(),
        421,
        "a valid token does not make a foreign Host ours"
    );
    assert_eq!(
        post_json(&client, start.clone(), body)
            .bearer_auth(operator)
            .header("origin", "http://evil.example")
            .send()
            .await?
            .status(),
        403,
        "nor a foreign Origin"
    );

    // Failed tokens are limited per address: after ten (the revoked one
    // counted), even a good one waits (the window is a minute; this test
    // ends here).
    for _ in 0..9 {
        let wrong =
            client.get(format!("{base}/api/runs")).bearer_auth("weft_0000_nope").send().await?;
        assert_eq!(wrong.status(), 401);
    }
    let limited = client.get(format!("{base}/api/runs")).bearer_auth(viewer).send().await?;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_console_signs_in_with_a_token_and_every_form_needs_its_csrf_token() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator), ("watcher", Role::Viewer)]).await?;
    let server = server_with(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;

    let first = client.get(format!("{base}/runs/x?y=1")).send().await?;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        first.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/login?next=%2Fruns%2Fx%3Fy%3D1")
    );
    let login = client.get(format!("{base}/login")).send().await?;
    assert_eq!(login.status(), 200);
    let csp = login
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let wrong = client
        .post(format!("{base}/login"))
        .form_body(&[("token", "weft_abcd_wrong"), ("next", "/")])
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let away = client
        .post(format!("{base}/login"))
        .form_body(&[("token", made[0].as_str()), ("next", "//evil.example/")])
        .send()
        .await?;
    assert_eq!(
        away.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/"),
        "no open redirect"
    );

    let ops = sign_in(&client, &base, &made[0]).await?;
    let start = format!("{base}/workflows/manual/start");
    let form = [("input.email", "console@example.com"), ("mode", "run")];
    let no_csrf = client.post(&start).header("cookie", &ops.cookie).form_body(&form).send().await?;
    assert_eq!(no_csrf.status(), 403, "a form without the CSRF token");
    let mut with_csrf = form.to_vec();
    with_csrf.push(("csrf", ops.csrf.as_str()));
    let cross_site = client
        .post(&start)
        .header("cookie", &ops.cookie)
        .header("origin", "http://evil.example")
        .form_body(&with_csrf)
        .send()
        .await?;
    assert_eq!(cross_site.status(), 403, "another site's page");
    assert_eq!(emulator.customer_count(), 0, "nothing was started");
    let started =
        client.post(&start).header("cookie", &ops.cookie).form_body(&with_csrf).send().await?;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let location =
        started.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let run = location.strip_prefix("/runs/").ok_or("a redirect to the run")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = client
            .get(format!("{base}{location}"))
            .header("cookie", &ops.cookie)
            .send()
            .await?
            .text()
            .await?;
        if page.contains("status succeeded") || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(page.contains("status succeeded"), "{page}");
    assert!(page.contains("data-step=\"customer\"") && page.contains("count-created\">1<"));
    assert!(page.contains("<td>ops</td>"), "the history names who started it");
    // The CSP (`style-src 'self'`) refuses inline styles: a page that needs
    // one shows broken (the timeline's bars were).
    assert!(!page.contains(" style="), "an inline style the browser refuses: {page}");
    assert_eq!(emulator.customer_count(), 1);
    let list = client.get(format!("{base}/")).header("cookie", &ops.cookie).send().await?;
    let list = list.text().await?;
    assert!(list.contains(&format!("data-run-id=\"{run}\"")), "the runs list shows it");

    // A viewer's session reads and cannot act.
    let viewer = sign_in(&client, &base, &made[1]).await?;
    let refused = client
        .post(format!("{base}/runs/{run}/rerun"))
        .header("cookie", &viewer.cookie)
        .form_body(&[("csrf", viewer.csrf.as_str())])
        .send()
        .await?;
    assert_eq!(refused.status(), 403);
    // The session's CSRF token is the session's own.
    let swapped = client
        .post(format!("{base}/runs/{run}/rerun"))
        .header("cookie", &ops.cookie)
        .form_body(&[("csrf", viewer.csrf.as_str())])
        .send()
        .await?;
    assert_eq!(swapped.status(), 403);

    let out = client
        .post(format!("{base}/logout"))
        .header("cookie", &ops.cookie)
        .form_body(&[("csrf", ops.csrf.as_str())])
        .send()
        .await?;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    let after = client.get(format!("{base}/")).header("cookie", &ops.cookie).send().await?;
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the session ended");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_open_loopback_server_lets_this_machine_in_until_the_first_token() -> TestResult {
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server = server_with(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;
    let page = client.get(format!("{base}/")).send().await?;
    assert_eq!(page.status(), 200, "no token in the store: open on loopback");
    let page = page.text().await?;
    assert!(page.contains("local (admin)"));
    let form_page = client.get(format!("{base}/workflows/manual")).send().await?.text().await?;
    let csrf = csrf_of(&form_page).ok_or("the open server's CSRF token")?;
    let start = format!("{base}/workflows/manual/start");
    let form = [("input.email", "open@example.com"), ("mode", "dry-run")];
    assert_eq!(
        client.post(&start).form_body(&form).send().await?.status(),
        403,
        "a form post without the token: what a page of another site could send"
    );
    let mut with_csrf = form.to_vec();
    with_csrf.push(("csrf", csrf.as_str()));
    let dry = client.post(&start).form_body(&with_csrf).send().await?;
    assert_eq!(dry.status(), StatusCode::SEE_OTHER);
    let api = post_json(&client, format!("{base}/api/workflows/manual/runs"), "{}").send().await?;
    assert_eq!(api.status(), 422, "the API is open too (and says the input is missing)");

    let created =
        post_json(&client, format!("{base}/api/tokens"), r#"{"name": "first", "role": "admin"}"#)
            .send()
            .await?;
    assert_eq!(created.status(), 201);
    assert_eq!(
        client.get(format!("{base}/api/runs")).send().await?.status(),
        401,
        "the first token closes the server"
    );
    assert_eq!(client.get(format!("{base}/")).send().await?.status(), StatusCode::SEE_OTHER);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn hostile_values_are_escaped_and_hostile_filters_refused() -> TestResult {
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let server = server_with(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;
    let script = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    let body = serde_json::json!({ "email": script }).to_string();
    let started =
        post_json(&client, format!("{base}/api/workflows/manual/runs?dry_run=true"), &body)
            .bearer_auth(&made[0])
            .send()
            .await?;
    let run: Value = serde_json::from_slice(&started.bytes().await?)?;
    let run = run["run_id"].as_str().ok_or("run id")?.to_owned();
    let ops = sign_in(&client, &base, &made[0]).await?;
    let page = client
        .get(format!("{base}/runs/{run}"))
        .header("cookie", &ops.cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(!page.contains("<script>alert") && !page.contains("<img src=x"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    for query in
        ["q=%3Cscript%3E", "status=exploded", "from=yesterday", &format!("q={}", "a".repeat(100))]
    {
        let refused =
            client.get(format!("{base}/?{query}")).header("cookie", &ops.cookie).send().await?;
        assert_eq!(refused.status(), 400, "{query}");
        assert!(!refused.text().await?.contains("<script>"));
    }
    let unknown = client
        .get(format!("{base}/runs/..%2F..%2Fetc%2Fpasswd"))
        .header("cookie", &ops.cookie)
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    let huge = client
        .post(format!("{base}/workflows/manual/start"))
        .header("cookie", &ops.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 200 << 10])
        .send()
        .await?;
    assert_eq!(huge.status(), 413, "a form beyond the body limit");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_console_pages_and_failed_sign_ins_is_answered_in_bounded_time() -> TestResult {
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let server = server_with(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;
    let ops = sign_in(&client, &base, &made[0]).await?;
    for i in 0..20 {
        let body = serde_json::json!({ "email": format!("burst{i}@example.com") }).to_string();
        post_json(&client, format!("{base}/api/workflows/manual/runs?dry_run=true"), &body)
            .bearer_auth(&made[0])
            .send()
            .await?;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (client, base, cookie) = (client.clone(), base.clone(), ops.cookie.clone());
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..25 {
                let path = match (worker + i) % 3 {
                    0 => "/".to_owned(),
                    1 => "/workflows".to_owned(),
                    _ => "/?status=succeeded".to_owned(),
                };
                let status = client
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(status);
            }
            statuses
        });
    }
    let mut answered = 0;
    while let Some(statuses) = tasks.join_next().await {
        let statuses = statuses?;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        answered += statuses.len();
    }
    assert_eq!(answered, 400);
    assert!(started.elapsed() < Duration::from_secs(60), "400 pages took {:?}", started.elapsed());
    // A flood of wrong sign-ins is refused quickly and does not lock the
    // store or the server.
    let mut limited = 0;
    for _ in 0..50 {
        let status = client
            .post(format!("{base}/login"))
            .form_body(&[("token", "weft_x_y"), ("next", "/")])
            .send()
            .await?
            .status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert_eq!(limited, 40, "ten tries a minute, then 429");
    let health = client.get(format!("{base}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    let still = client.get(format!("{base}/")).header("cookie", &ops.cookie).send().await?;
    assert_eq!(still.status(), 200, "a signed-in session goes on");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn tls_serves_the_console_with_secure_host_only_cookies() -> TestResult {
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let wf = upsert_workflow(files.path(), "manual", &stripe_server.base_url(), 4096)?;
    let server = start_with(
        state.path(),
        ServeConfig {
            workflows: vec![wf],
            tls: Some(weft::serve::TlsFiles {
                cert: fixtures.join("localhost.crt"),
                key: fixtures.join("localhost.key"),
            }),
            ..config()?
        },
    )
    .await?;
    let base = format!("https://localhost:{}", server.addr.port());
    let cert = reqwest::Certificate::from_pem(&std::fs::read(fixtures.join("localhost.crt"))?)?;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .add_root_certificate(cert)
        .resolve("localhost", server.addr)
        .build()?;
    assert_eq!(client.get(format!("{base}/healthz")).send().await?.status(), 200);
    let login = client
        .post(format!("{base}/login"))
        .form_body(&[("token", made[0].as_str()), ("next", "/")])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cookie.starts_with("__Host-weft_session=") && cookie.contains("; Secure"), "{cookie}");
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", server.addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()), "no plain HTTP");
    // A client that never finishes its handshake holds a task, not the
    // listener.
    let _stalled = tokio::net::TcpStream::connect(server.addr).await?;
    assert_eq!(client.get(format!("{base}/healthz")).send().await?.status(), 200);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_dry_runs_plan_shows_each_changed_field_before_and_after() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 3).await?;
    let existing = emulator.customers().first().cloned().ok_or("a seeded customer")?;
    let id = existing["id"].as_str().ok_or("its id")?.to_owned();
    let old_name = existing["name"].as_str().unwrap_or_default().to_owned();
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let text = format!(
        "[workflow]\nname = \"rename\"\n\n[inputs.id]\ntype = \"string\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"rename\"\nupsert = \"stripe.customers\"\nrecord = {{ id = \"${{{{ .inputs.id }}}}\", name = \"Renamed <b>Customer</b>\" }}\n",
        super::serve::key_file(files.path())?,
        stripe_server.base_url()
    );
    let wf = super::support::workflow(files.path(), &text)?;
    let server = start_with(state.path(), ServeConfig { workflows: vec![wf], ..config()? }).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;
    let body = serde_json::json!({ "id": id }).to_string();
    let started =
        post_json(&client, format!("{base}/api/workflows/rename/runs?dry_run=true"), &body)
            .bearer_auth(&made[0])
            .send()
            .await?;
    let run: Value = serde_json::from_slice(&started.bytes().await?)?;
    let run = run["run_id"].as_str().ok_or("run id")?.to_owned();
    let authed = reqwest::Client::builder()
        .default_headers(
            [(reqwest::header::AUTHORIZATION, format!("Bearer {}", made[0]).parse()?)]
                .into_iter()
                .collect(),
        )
        .build()?;
    let detail = wait_finished(&authed, &base, &run).await?;
    assert_eq!(detail["steps"][0]["plan"]["samples"][0]["before"]["name"], old_name, "{detail:#}");
    let ops = sign_in(&client, &base, &made[0]).await?;
    let page = client
        .get(format!("{base}/runs/{run}"))
        .header("cookie", &ops.cookie)
        .send()
        .await?
        .text()
        .await?;
    let row = page.split("data-field=\"name\"").nth(1).ok_or("a row for the changed field")?;
    let row = row.split("</tr>").next().unwrap_or_default();
    assert!(row.contains(&format!("&quot;{old_name}&quot;")), "before: {row}");
    assert!(row.contains("Renamed &lt;b&gt;Customer&lt;/b&gt;"), "after, escaped: {row}");
    assert_eq!(
        emulator.customers().first().map(|c| c["name"].clone()),
        Some(existing["name"].clone()),
        "a dry run writes nothing"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_workflows_state_is_shown_escaped_to_signed_in_callers_only() -> TestResult {
    use super::serve::key_file;
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("watcher", Role::Viewer), ("ops", Role::Operator)]).await?;
    let (viewer, operator) = (&made[0], &made[1]);
    let text = format!(
        r#"[workflow]
name = "stateful"

[inputs.email]
type = "string"

[state.count]
default = 0

[state.last_email]
default = "nobody"

[connections.stripe]
plugin = "stripe"
credentials = "{key}"
base_url = "{base_url}"
rate_limit = "10000/s"

[[step]]
id = "customer"
upsert = "stripe.customers"
record = {{ email = "${{{{ .inputs.email }}}}" }}
state = {{ count = "${{{{ $state.count + 1 }}}}", last_email = "${{{{ .inputs.email }}}}" }}
"#,
        key = key_file(files.path())?,
        base_url = stripe_server.base_url(),
    );
    let workflow = super::support::workflow(files.path(), &text)?;
    let server =
        start_with(state.path(), ServeConfig { workflows: vec![workflow], ..config()? }).await?;
    let base = format!("http://{}", server.addr);
    let client = client()?;

    // The state route is the API's: no token, no state.
    let route = format!("{base}/api/workflows/stateful/state");
    let anonymous = client.get(&route).send().await?;
    assert_eq!(anonymous.status(), 401);
    assert!(!anonymous.text().await?.contains("nobody"), "no value without a token");
    assert_eq!(client.get(&route).bearer_auth("weft_not_a_token").send().await?.status(), 401);
    assert_eq!(client.get(&route).bearer_auth(viewer).send().await?.status(), 200);
    // Nor the console's page without a session.
    let unsigned = client.get(format!("{base}/workflows/stateful")).send().await?;
    assert_eq!(unsigned.status(), StatusCode::SEE_OTHER, "to the sign-in page");

    let watcher = sign_in(&client, &base, viewer).await?;
    let page = |path: String| {
        let (client, cookie) = (client.clone(), watcher.cookie.clone());
        async move {
            let answer = client.get(path).header("cookie", cookie).send().await?;
            assert_eq!(answer.status(), 200);
            TestResult::Ok(answer.text().await?)
        }
    };
    let before = page(format!("{base}/workflows/stateful")).await?;
    let table = before.split("id=\"state\"").nth(1).ok_or("a state table")?;
    assert!(table.contains("<td><code>count</code></td><td><code>0</code></td>"), "{before}");
    assert!(before.contains("never changed"), "{before}");

    let script = "<script>alert(1)</script>@example.com";
    let body = serde_json::json!({ "email": script }).to_string();
    let started = post_json(&client, format!("{base}/api/workflows/stateful/runs"), &body)
        .bearer_auth(operator)
        .send()
        .await?;
    let run = started_run(started).await?;
    let authed = bearer_client(viewer)?;
    let detail = wait_finished(&authed, &base, &run).await?;
    assert_eq!(detail["status"], "succeeded", "{detail:#}");

    let after = page(format!("{base}/workflows/stateful")).await?;
    let table = after.split("id=\"state\"").nth(1).ok_or("a state table")?;
    assert!(table.contains("<td><code>count</code></td><td><code>1</code></td>"), "{after}");
    assert!(!after.contains("<script>alert"), "the value is escaped: {after}");
    assert!(after.contains("&lt;script&gt;alert(1)&lt;/script&gt;@example.com"), "{after}");
    assert!(
        after.contains(&format!("last changed by run <a href=\"/runs/{run}\">")),
        "the run that set it: {after}"
    );
    let run_page = page(format!("{base}/runs/{run}")).await?;
    let changes = run_page.split("id=\"state-changes\"").nth(1).ok_or("a state changes table")?;
    assert!(
        changes.contains(
            "<td>customer</td><td><code>count</code></td><td><code>0</code></td><td><code>1</code>"
        ),
        "{run_page}"
    );
    assert!(!run_page.contains("<script>alert"), "{run_page}");
    server.shutdown().await;
    Ok(())
}
