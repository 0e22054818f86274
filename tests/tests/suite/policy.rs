//! The policy matrix (issue 12): who may do what, for each relationship between an actor A and a peer B (or a group
//! G), and each action on a conversation, on two nodes with the default friendship rule.
//!
//! Every cell starts from fresh users and brings them into its row's state. Just before the row's last change,
//! node 1 is shown the old state (A sends, reads history there), so a cache that outlived the change would show.
//! The last change is made through node 0's REST API and the column's action is tried at once through node 1 —
//! no retry: the server promises that a change holds on every node for the next request after it returned.
//! Where something is refused, the test also checks that B did not receive it and that nothing was stored.
//!
//! `MATRIX` is the one table of expected outcomes; `docs/security.md` ("Who may do what") shows it rendered, and
//! `policy_matrix_in_security_md_matches_the_test` keeps the two equal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use common::frame::{
    kinds, Ack, Attrs, ReadRequest, RecallRequest, Send, SyncRequest, TypingRequest,
};
use common::ids::{ConvId, Seq};
use common::{ClientFrame, ServerFrame};
use serde_json::{json, Value};
use tests::client::WAIT;
use tests::observe::{answer, bare_error, until, within};
use tests::{Cluster, ClusterOptions, TestClient, TestUser};

/// How long something that must not arrive is waited for.
const QUIET: Duration = Duration::from_millis(500);

/// The columns: what A tries, through node 1.
const COLUMNS: [&str; 11] = [
    "send `to`",
    "send `conv`",
    "typing",
    "read",
    "recall",
    "sync",
    "history",
    "group create",
    "group add",
    "group remove",
    "media fetch",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    To,
    Conv,
    Typing,
    Read,
    Recall,
    Sync,
    History,
    Create,
    Add,
    Remove,
    Media,
}

const COLS: [Col; 11] = [
    Col::To,
    Col::Conv,
    Col::Typing,
    Col::Read,
    Col::Recall,
    Col::Sync,
    Col::History,
    Col::Create,
    Col::Add,
    Col::Remove,
    Col::Media,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Strangers,
    Pending,
    Friends,
    Unfriended,
    BlockedByPeer,
    BlockedByActor,
    Member,
    Invited,
    Removed,
    Left,
    Owner,
}

struct Row {
    state: State,
    label: &'static str,
    outcomes: [&'static str; 11],
}

const NA: &str = "—";

/// The expected outcome of every action (column) in every state (row); the tokens are explained in
/// `docs/security.md`, "Who may do what".
#[rustfmt::skip]
const MATRIX: [Row; 11] = [
    row(State::Strangers,       "strangers",                             ["not_friends", NA,            NA,            NA,           NA,           NA,           NA,    "invited", "invited", NA,    "404"]),
    row(State::Pending,         "request pending (A asked B)",           ["not_friends", NA,            NA,            NA,           NA,           NA,           NA,    "invited", "invited", NA,    "404"]),
    row(State::Friends,         "friends (again, after an unfriend)",    ["ok",          "ok",          "ok",          "ok",         "ok",         "ok",         "ok",  "added",   "added",   NA,    "ok"]),
    row(State::Unfriended,      "unfriended",                            ["not_friends", "not_friends", "not_friends", "ok_self",    "ok",         "ok",         "ok",  "invited", "invited", NA,    "ok"]),
    row(State::BlockedByPeer,   "blocked by the peer (B blocked A)",     ["blocked",     "blocked",     "blocked",     "ok_self",    "ok",         "ok",         "ok",  "hidden",  "hidden",  NA,    "ok"]),
    row(State::BlockedByActor,  "blocked by the actor (A blocked B)",    ["blocked",     "blocked",     "blocked",     "ok_self",    "ok",         "ok",         "ok",  "invited", "invited", NA,    "ok"]),
    row(State::Member,          "group member (accepted an invitation)", [NA,            "ok",          "ok",          "ok_self",    "ok",         "ok",         "ok",  NA,        "invited", "403", "ok"]),
    row(State::Invited,         "invited to the group, not accepted",    [NA,            "not_member",  "not_member",  "not_member", "not_member", "not_member", "404", NA,        "404",     "404", "404"]),
    row(State::Removed,         "removed from the group",                [NA,            "not_member",  "not_member",  "not_member", "not_member", "not_member", "404", NA,        "404",     "404", "404"]),
    row(State::Left,            "left the group",                        [NA,            "not_member",  "not_member",  "not_member", "not_member", "not_member", "404", NA,        "404",     "404", "404"]),
    row(State::Owner,           "group owner",                           [NA,            "ok",          "ok",          "ok_self",    "ok",         "ok",         "ok",  NA,        "invited", "ok",  "ok"]),
];

const fn row(state: State, label: &'static str, outcomes: [&'static str; 11]) -> Row {
    Row {
        state,
        label,
        outcomes,
    }
}

/// The matrix as the markdown table `docs/security.md` carries.
fn render() -> String {
    let mut out = String::new();
    out.push_str("| A and B (or A and group G) | ");
    out.push_str(&COLUMNS.join(" | "));
    out.push_str(" |\n|---|");
    out.push_str(&"---|".repeat(COLUMNS.len()));
    out.push('\n');
    for row in &MATRIX {
        out.push_str("| ");
        out.push_str(row.label);
        for token in row.outcomes {
            if token == NA {
                out.push_str(" | —");
            } else {
                out.push_str(&format!(" | `{token}`"));
            }
        }
        out.push_str(" |\n");
    }
    out
}

#[test]
fn policy_matrix_in_security_md_matches_the_test() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = "<!-- policy-matrix:start -->\n";
    let end = "<!-- policy-matrix:end -->";
    let from = doc
        .find(start)
        .expect("docs/security.md has the policy-matrix:start marker")
        + start.len();
    let to = doc[from..]
        .find(end)
        .expect("docs/security.md has the policy-matrix:end marker")
        + from;
    let rendered = render();
    assert!(
        doc[from..to] == rendered,
        "docs/security.md's policy matrix differs from tests/tests/suite/policy.rs; put this between the markers:\n\n{rendered}"
    );
}

/// Everything a cell's action needs.
struct Cell {
    a: TestUser,
    b: TestUser,
    /// A on node 1: every action goes through it.
    a1: TestClient,
    /// A's second device, on node 0: sees A's own `read` frames.
    a2: TestClient,
    /// B on node 0.
    bc: TestClient,
    /// The 1:1 conversation of A and B, or the group.
    conv: Option<ConvId>,
    /// A seq of `conv` for `read`.
    read_seq: Seq,
    /// A message of A's in `conv` for `recall` (rows where A has none: any message of `conv`).
    recall_seq: Seq,
    /// A medium B uploaded (and sent into `conv` when there is one).
    media: String,
    /// 1:1 rows: a group of A's alone, to add B to.
    own_group: Option<ConvId>,
    /// Group rows: a user A tries to add (a stranger to everyone).
    newcomer: Option<TestUser>,
}

fn send_frame(cid: &str, to: Option<i64>, conv: Option<ConvId>) -> ClientFrame {
    ClientFrame::Send(Send {
        cid: cid.into(),
        to,
        conv,
        kind: kinds::TEXT.into(),
        body: format!("policy {cid}"),
        attrs: None,
    })
}

async fn send(
    client: &mut TestClient,
    cid: &str,
    to: Option<i64>,
    conv: Option<ConvId>,
) -> anyhow::Result<Result<Ack, common::frame::ErrorFrame>> {
    client.send(&send_frame(cid, to, conv)).await?;
    answer(client, cid, WAIT).await
}

async fn api(
    cluster: &Cluster,
    node: usize,
    user: &TestUser,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    cluster.api(node, user, method, path, body).await
}

/// A REST call that must answer `status`.
async fn must(
    cluster: &Cluster,
    node: usize,
    user: &TestUser,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> anyhow::Result<Value> {
    let (got, value) = api(cluster, node, user, method, path, body).await?;
    ensure!(
        got == status,
        "{method} {path}: {got} {value} (wanted {status})"
    );
    Ok(value)
}

/// B uploads a PDF nobody else has (bytes unique to this cell) and returns its hash.
async fn upload_unique(cluster: &Cluster, user: &TestUser) -> anyhow::Result<String> {
    let bytes = format!("%PDF-1.4 policy matrix {:032x}", rand::random::<u128>()).into_bytes();
    let (status, body) = benchmarks::client::http_raw(
        cluster.addr(0),
        "POST",
        "/v1/media",
        Some(&user.token),
        "application/pdf",
        bytes.into(),
    )
    .await?;
    let value: Value = serde_json::from_slice(&body).unwrap_or_default();
    ensure!(status.is_success(), "upload: {status} {value}");
    value["hash"]
        .as_str()
        .map(str::to_owned)
        .context("upload answered no hash")
}

/// B sends the medium as a file message (to A, or into `conv`); returns the ack.
async fn send_file(
    client: &mut TestClient,
    to: Option<i64>,
    conv: Option<ConvId>,
    hash: &str,
) -> anyhow::Result<Ack> {
    let frame = ClientFrame::Send(Send {
        cid: "file".into(),
        to,
        conv,
        kind: kinds::FILE.into(),
        body: String::new(),
        attrs: Some(Attrs {
            media: Some(hash.into()),
            name: Some("notes.pdf".into()),
            ..Attrs::default()
        }),
    });
    client.send(&frame).await?;
    answer(client, "file", WAIT)
        .await?
        .map_err(|e| anyhow::anyhow!("file message refused: {e:?}"))
}

fn acked(outcome: Result<Ack, common::frame::ErrorFrame>, what: &str) -> anyhow::Result<Ack> {
    outcome.map_err(|e| anyhow::anyhow!("{what} refused: {e:?}"))
}

/// Shows node 1 the state before the last change: A sends (by `to` and by `conv`) and reads history there. Outcomes
/// do not matter; only that node 1 had to decide.
async fn show_node_1(cluster: &Cluster, cell: &mut Cell, to: Option<i64>) -> anyhow::Result<()> {
    if let Some(to) = to {
        let _ = send(&mut cell.a1, "warm-to", Some(to), None).await?;
    }
    if let Some(conv) = cell.conv {
        let _ = send(&mut cell.a1, "warm-conv", None, Some(conv)).await?;
        api(
            cluster,
            1,
            &cell.a,
            "GET",
            &format!("/v1/conversations/{conv}/messages"),
            None,
        )
        .await?;
    }
    Ok(())
}

fn group_id(value: &Value) -> anyhow::Result<ConvId> {
    value["id"]
        .as_i64()
        .with_context(|| format!("no group id in {value}"))
}

/// Brings fresh users into `state`; the last step is the row's change, through node 0.
async fn prepare(cluster: &Cluster, state: State, column: Col) -> anyhow::Result<Cell> {
    let a = cluster.user("pa").await?;
    let b = cluster.user("pb").await?;
    let a1 = cluster.connect(1, &a, "phone").await?;
    let a2 = cluster.connect(0, &a, "laptop").await?;
    let bc = cluster.connect(0, &b, "phone").await?;
    let newcomer = match column {
        Col::Add
            if matches!(
                state,
                State::Member | State::Invited | State::Removed | State::Left | State::Owner
            ) =>
        {
            Some(cluster.user("pn").await?)
        }
        _ => None,
    };
    let mut cell = Cell {
        a,
        b,
        a1,
        a2,
        bc,
        conv: None,
        read_seq: 0,
        recall_seq: 0,
        media: String::new(),
        own_group: None,
        newcomer,
    };
    let (a, b) = (cell.a.clone(), cell.b.clone());
    let user_path = |user: &TestUser| user.id.to_string();
    match state {
        State::Strangers
        | State::Pending
        | State::Friends
        | State::Unfriended
        | State::BlockedByPeer
        | State::BlockedByActor => {
            cell.media = upload_unique(cluster, &b).await?;
            let mine = must(
                cluster,
                0,
                &a,
                "POST",
                "/v1/groups",
                Some(json!({"title": "mine", "members": []})),
                201,
            )
            .await?;
            cell.own_group = Some(group_id(&mine)?);
            if matches!(state, State::Strangers | State::Pending) {
                show_node_1(cluster, &mut cell, Some(b.id)).await?;
                if state == State::Pending {
                    must(
                        cluster,
                        0,
                        &a,
                        "POST",
                        "/v1/friends/requests",
                        Some(json!({"user": b.id})),
                        201,
                    )
                    .await?;
                }
                return Ok(cell);
            }
            cluster.befriend(&a, &b).await?;
            let own = acked(
                send(&mut cell.a1, "mine", Some(b.id), None).await?,
                "A's first message",
            )?;
            cell.conv = Some(own.conv);
            cell.recall_seq = own.seq;
            send_file(&mut cell.bc, Some(a.id), None, &cell.media).await?;
            let unread = acked(
                send(&mut cell.bc, "unread", Some(a.id), None).await?,
                "B's message",
            )?;
            cell.read_seq = unread.seq;
            match state {
                State::Friends => {
                    must(
                        cluster,
                        0,
                        &b,
                        "DELETE",
                        &format!("/v1/friends/{}", user_path(&a)),
                        None,
                        204,
                    )
                    .await?;
                    show_node_1(cluster, &mut cell, Some(b.id)).await?;
                    cluster.befriend(&a, &b).await?;
                }
                State::Unfriended => {
                    show_node_1(cluster, &mut cell, Some(b.id)).await?;
                    must(
                        cluster,
                        0,
                        &a,
                        "DELETE",
                        &format!("/v1/friends/{}", user_path(&b)),
                        None,
                        204,
                    )
                    .await?;
                }
                State::BlockedByPeer => {
                    show_node_1(cluster, &mut cell, Some(b.id)).await?;
                    must(
                        cluster,
                        0,
                        &b,
                        "PUT",
                        &format!("/v1/blocks/{}", user_path(&a)),
                        None,
                        204,
                    )
                    .await?;
                }
                _ => {
                    show_node_1(cluster, &mut cell, Some(b.id)).await?;
                    must(
                        cluster,
                        0,
                        &a,
                        "PUT",
                        &format!("/v1/blocks/{}", user_path(&b)),
                        None,
                        204,
                    )
                    .await?;
                }
            }
        }
        State::Member | State::Invited | State::Removed | State::Left => {
            // B owns G. A is invited to it as a stranger (not for `Invited`: added as the last change).
            let members = if state == State::Invited {
                json!([])
            } else {
                json!([a.id])
            };
            let group = must(
                cluster,
                0,
                &b,
                "POST",
                "/v1/groups",
                Some(json!({"title": "theirs", "members": members})),
                201,
            )
            .await?;
            let conv = group_id(&group)?;
            cell.conv = Some(conv);
            let accept = format!("/v1/invitations/{conv}/accept");
            if matches!(state, State::Removed | State::Left) {
                must(cluster, 0, &a, "POST", &accept, None, 200).await?;
                let own = acked(
                    send(&mut cell.a1, "mine", None, Some(conv)).await?,
                    "A's message",
                )?;
                cell.recall_seq = own.seq;
            }
            cell.media = upload_unique(cluster, &b).await?;
            let file = send_file(&mut cell.bc, None, Some(conv), &cell.media).await?;
            cell.read_seq = file.seq;
            if cell.recall_seq == 0 {
                cell.recall_seq = file.seq;
            }
            show_node_1(cluster, &mut cell, None).await?;
            match state {
                State::Member => {
                    must(cluster, 0, &a, "POST", &accept, None, 200).await?;
                    if column == Col::Recall {
                        let own = acked(
                            send(&mut cell.a2, "mine", None, Some(conv)).await?,
                            "A's message",
                        )?;
                        cell.recall_seq = own.seq;
                    }
                }
                State::Invited => {
                    must(
                        cluster,
                        0,
                        &b,
                        "POST",
                        &format!("/v1/groups/{conv}/members"),
                        Some(json!({"users": [a.id]})),
                        200,
                    )
                    .await?;
                }
                State::Removed => {
                    must(
                        cluster,
                        0,
                        &b,
                        "DELETE",
                        &format!("/v1/groups/{conv}/members/{}", a.id),
                        None,
                        204,
                    )
                    .await?;
                }
                _ => {
                    must(
                        cluster,
                        0,
                        &a,
                        "POST",
                        &format!("/v1/groups/{conv}/leave"),
                        None,
                        204,
                    )
                    .await?;
                }
            }
        }
        State::Owner => {
            cluster.befriend(&a, &b).await?;
            let group = must(
                cluster,
                0,
                &a,
                "POST",
                "/v1/groups",
                Some(json!({"title": "mine", "members": []})),
                201,
            )
            .await?;
            let conv = group_id(&group)?;
            cell.conv = Some(conv);
            let own = acked(
                send(&mut cell.a1, "mine", None, Some(conv)).await?,
                "A's message",
            )?;
            cell.recall_seq = own.seq;
            cell.read_seq = own.seq;
            show_node_1(cluster, &mut cell, None).await?;
            let added = must(
                cluster,
                0,
                &a,
                "POST",
                &format!("/v1/groups/{conv}/members"),
                Some(json!({"users": [b.id]})),
                200,
            )
            .await?;
            ensure!(
                contains(&added["added"], b.id),
                "a friend is added directly: {added}"
            );
            if column == Col::Media {
                cell.media = upload_unique(cluster, &b).await?;
                send_file(&mut cell.bc, None, Some(conv), &cell.media).await?;
            }
        }
    }
    Ok(cell)
}

fn contains(list: &Value, id: i64) -> bool {
    list.as_array()
        .is_some_and(|items| items.iter().any(|v| v.as_i64() == Some(id)))
}

fn code(error: &common::frame::ErrorFrame) -> String {
    if error.retry {
        format!("{}(retry)", error.code.as_str())
    } else {
        error.code.as_str().to_string()
    }
}

/// Whether a frame `pick` accepts reaches `client`: waited for up to `WAIT` when it should, for `QUIET` when it
/// should not.
async fn arrives(
    client: &mut TestClient,
    should: bool,
    pick: impl FnMut(&ServerFrame) -> bool,
) -> anyhow::Result<bool> {
    let mut pick = pick;
    let window = if should { WAIT } else { QUIET };
    Ok(within(client, window, |f| pick(f).then_some(()))
        .await?
        .is_some())
}

/// A send by `to` or `conv`: `ok` only if acked AND delivered to B; a refusal must be final, unstored, undelivered.
async fn act_send(
    cell: &mut Cell,
    sql: &tokio_postgres::Client,
    to: Option<i64>,
    conv: Option<ConvId>,
    expected: &str,
) -> anyhow::Result<String> {
    let outcome = send(&mut cell.a1, "act", to, conv).await?;
    let a = cell.a.id;
    let delivered = arrives(
        &mut cell.bc,
        expected == "ok",
        |f| matches!(f, ServerFrame::Msg(m) if m.cid == "act" && m.from == a),
    )
    .await?;
    let stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM messages WHERE sender = $1 AND cid = 'act'",
            &[&a],
        )
        .await?
        .get(0);
    Ok(match outcome {
        Ok(_) if delivered => "ok".into(),
        Ok(_) => "acked_not_delivered".into(),
        Err(error) if delivered => format!("{}+delivered", code(&error)),
        Err(error) if stored > 0 => format!("{}+stored", code(&error)),
        Err(error) => code(&error),
    })
}

/// Whether B can see a pending invitation to `group` (its list, and a real-time notice from A).
async fn invitation_seen(
    cluster: &Cluster,
    cell: &mut Cell,
    invitee: &TestUser,
    group: ConvId,
    expected: &str,
) -> anyhow::Result<String> {
    let (status, list) = api(cluster, 1, invitee, "GET", "/v1/invitations", None).await?;
    let listed = status == 200
        && list["invitations"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["group"].as_i64() == Some(group)));
    let notified = if invitee.id == cell.b.id {
        let from = cell.a.id;
        arrives(&mut cell.bc, expected == "invited", |f| {
            matches!(f, ServerFrame::Notice(n) if n.kind == "group_invitation" && n.user == from && n.conv == Some(group))
        })
        .await?
    } else {
        listed
    };
    Ok(match (listed, notified) {
        (true, true) => "invited".into(),
        (false, false) => "hidden".into(),
        (true, false) => "invited_without_notice".into(),
        (false, true) => "notice_without_invitation".into(),
    })
}

/// A group create or add answered `value`: where did `who` end up?
async fn placed(
    cluster: &Cluster,
    cell: &mut Cell,
    value: &Value,
    added_key: &str,
    group: ConvId,
    who: &TestUser,
    expected: &str,
) -> anyhow::Result<String> {
    let added = contains(&value[added_key], who.id);
    let invited = contains(&value["invited"], who.id);
    match (added, invited) {
        (true, false) => {
            // Really a member, at once, on the other node.
            let (status, _) = api(
                cluster,
                1,
                who,
                "GET",
                &format!("/v1/conversations/{group}/messages"),
                None,
            )
            .await?;
            Ok(if status == 200 {
                "added".into()
            } else {
                format!("added_but_history_{status}")
            })
        }
        (false, true) => invitation_seen(cluster, cell, who, group, expected).await,
        _ => Ok(format!("unplaced:{value}")),
    }
}

/// Tries `column` once, through node 1, and names what happened.
async fn act(
    cluster: &Cluster,
    sql: &tokio_postgres::Client,
    cell: &mut Cell,
    column: Col,
    expected: &str,
) -> anyhow::Result<String> {
    let conv = cell.conv;
    let conv_id = || conv.context("this row has no conversation");
    let a = cell.a.clone();
    let b = cell.b.clone();
    let refused = expected != "ok" && expected != "ok_self";
    match column {
        Col::To => act_send(cell, sql, Some(b.id), None, expected).await,
        Col::Conv => act_send(cell, sql, None, conv, expected).await,
        Col::Typing => {
            let conv = conv_id()?;
            cell.a1
                .send(&ClientFrame::Typing(TypingRequest { conv }))
                .await?;
            let error = within(
                &mut cell.a1,
                if refused { WAIT } else { QUIET },
                |f| match f {
                    ServerFrame::Error(e) if e.cid.is_none() && e.rid.is_none() => Some(e.clone()),
                    _ => None,
                },
            )
            .await?;
            let relayed = arrives(
                &mut cell.bc,
                !refused,
                |f| matches!(f, ServerFrame::Typing(t) if t.conv == conv && t.user == a.id),
            )
            .await?;
            Ok(match (error, relayed) {
                (None, true) => "ok".into(),
                (None, false) => "no_answer".into(),
                (Some(e), false) => code(&e),
                (Some(e), true) => format!("{}+relayed", code(&e)),
            })
        }
        Col::Read => {
            let conv = conv_id()?;
            cell.a1
                .send(&ClientFrame::Read(ReadRequest {
                    conv,
                    seq: cell.read_seq,
                }))
                .await?;
            if refused {
                let error = bare_error(&mut cell.a1, WAIT).await?;
                return Ok(code(&error));
            }
            let own = arrives(
                &mut cell.a2,
                true,
                |f| matches!(f, ServerFrame::Read(r) if r.conv == conv && r.user == a.id),
            )
            .await?;
            if !own {
                let error = within(&mut cell.a1, QUIET, |f| match f {
                    ServerFrame::Error(e) => Some(e.clone()),
                    _ => None,
                })
                .await?;
                return Ok(error.map_or("no_read_frame".into(), |e| code(&e)));
            }
            let receipt = arrives(
                &mut cell.bc,
                expected == "ok",
                |f| matches!(f, ServerFrame::Read(r) if r.conv == conv && r.user == a.id),
            )
            .await?;
            Ok(if receipt { "ok" } else { "ok_self" }.into())
        }
        Col::Recall => {
            let conv = conv_id()?;
            cell.a1
                .send(&ClientFrame::Recall(RecallRequest {
                    cid: "act".into(),
                    conv,
                    seq: cell.recall_seq,
                }))
                .await?;
            Ok(match answer(&mut cell.a1, "act", WAIT).await? {
                Ok(_) => "ok".into(),
                Err(error) => code(&error),
            })
        }
        Col::Sync => {
            let conv = conv_id()?;
            cell.a1
                .send(&ClientFrame::Sync(SyncRequest {
                    rid: 4242,
                    conv,
                    after_seq: 0,
                    limit: 50,
                }))
                .await?;
            until(&mut cell.a1, WAIT, |f| match f {
                ServerFrame::Synced(s) if s.rid == 4242 => Some("ok".to_string()),
                ServerFrame::Error(e) if e.rid == Some(4242) => Some(code(e)),
                _ => None,
            })
            .await
        }
        Col::History => {
            let conv = conv_id()?;
            let (status, _) = api(
                cluster,
                1,
                &a,
                "GET",
                &format!("/v1/conversations/{conv}/messages"),
                None,
            )
            .await?;
            Ok(if status == 200 {
                "ok".into()
            } else {
                status.to_string()
            })
        }
        Col::Create => {
            let (status, value) = api(
                cluster,
                1,
                &a,
                "POST",
                "/v1/groups",
                Some(json!({"title": "with you", "members": [b.id]})),
            )
            .await?;
            if status != 201 {
                return Ok(status.to_string());
            }
            let group = group_id(&value)?;
            placed(cluster, cell, &value, "members", group, &b, expected).await
        }
        Col::Add => {
            let (group, who) = match (&cell.newcomer, cell.own_group) {
                (Some(newcomer), _) => (conv_id()?, newcomer.clone()),
                (None, Some(own)) => (own, b.clone()),
                (None, None) => bail!("no group to add to"),
            };
            let (status, value) = api(
                cluster,
                1,
                &a,
                "POST",
                &format!("/v1/groups/{group}/members"),
                Some(json!({"users": [who.id]})),
            )
            .await?;
            if status != 200 {
                return Ok(status.to_string());
            }
            placed(cluster, cell, &value, "added", group, &who, expected).await
        }
        Col::Remove => {
            let conv = conv_id()?;
            let (status, _) = api(
                cluster,
                1,
                &a,
                "DELETE",
                &format!("/v1/groups/{conv}/members/{}", b.id),
                None,
            )
            .await?;
            Ok(if status == 204 {
                "ok".into()
            } else {
                status.to_string()
            })
        }
        Col::Media => {
            let (status, _) = benchmarks::client::http_raw(
                cluster.addr(1),
                "GET",
                &format!("/v1/media/{}", cell.media),
                Some(&a.token),
                "application/json",
                Default::default(),
            )
            .await?;
            Ok(if status == 200 {
                "ok".into()
            } else {
                status.as_u16().to_string()
            })
        }
    }
}

async fn run_cell(
    cluster: Arc<Cluster>,
    sql: Arc<tokio_postgres::Client>,
    state: State,
    column: Col,
    expected: &'static str,
) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let mut cell = prepare(&cluster, state, column).await.context("setup")?;
    let prepared = started.elapsed();
    let outcome = act(&cluster, &sql, &mut cell, column, expected).await;
    if std::env::var("IM_POLICY_TIMES").is_ok() {
        eprintln!(
            "{state:?} x {column:?}: setup {prepared:?}, total {:?}",
            started.elapsed()
        );
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_matrix_holds_on_every_path_at_once_across_nodes() {
    let options = ClusterOptions::default()
        .arg("require-friendship", "true")
        .arg("group-consent", "true");
    let cluster = Arc::new(Cluster::start_with(2, options).await.unwrap());
    let sql = Arc::new(cluster.sql().await.unwrap());
    let permits = Arc::new(tokio::sync::Semaphore::new(12));
    let mut tasks = tokio::task::JoinSet::new();
    for (r, row) in MATRIX.iter().enumerate() {
        for (c, column) in COLS.iter().copied().enumerate() {
            let expected = row.outcomes[c];
            if expected == NA {
                continue;
            }
            let (cluster, sql, permits, state) =
                (cluster.clone(), sql.clone(), permits.clone(), row.state);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let observed = tokio::time::timeout(
                    Duration::from_secs(60),
                    run_cell(cluster, sql, state, column, expected),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("cell timed out")));
                (r, c, observed)
            });
        }
    }
    let began = std::time::Instant::now();
    let mut observed = vec![vec![NA.to_string(); COLUMNS.len()]; MATRIX.len()];
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (r, c, outcome) = joined.unwrap();
        let expected = MATRIX[r].outcomes[c];
        let got = match outcome {
            Ok(token) => token,
            Err(error) => format!("error: {error:#}"),
        };
        if got != expected {
            failures.push(format!(
                "{} × {}: expected {expected}, got {got}",
                MATRIX[r].label, COLUMNS[c]
            ));
        }
        observed[r][c] = got;
    }
    if std::env::var("IM_POLICY_TIMES").is_ok() {
        eprintln!("cells took {:?}", began.elapsed());
    }
    let mut grid = String::new();
    for (r, row) in MATRIX.iter().enumerate() {
        grid.push_str(&format!("{:<40}", row.label));
        for (c, token) in observed[r].iter().enumerate() {
            let mark = if token == row.outcomes[c] { "" } else { "!" };
            let short: String = token.chars().take(24).collect();
            grid.push_str(&format!(" {mark}{short}"));
        }
        grid.push('\n');
    }
    failures.sort();
    if std::env::var("IM_POLICY_TIMES").is_ok() {
        eprintln!("{grid}");
    }
    assert!(
        failures.is_empty(),
        "{} of the policy matrix's cells differ:\n{}\n\nobserved (! = differs):\n{grid}",
        failures.len(),
        failures.join("\n")
    );
}
