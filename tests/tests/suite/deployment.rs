//! The deployment-conditions test: the release node run the way the image runs it, with the environment the
//! shipped manifests give it, must migrate, become ready, serve the web client, carry a chat between two nodes and
//! serve an upload from the node that did not take it.
//!
//! No container engine runs on our CI machines (Docker's daemon is absent and podman cannot start a container in
//! this sandbox), so the test builds the image's conditions itself from the `Dockerfile`'s runtime stage: in a
//! private mount namespace it assembles a read-only root (the host's `/usr` and `/etc`, a minimal `/dev`, the
//! release binary at the ENTRYPOINT path, the freshly built web client where the image copies it, the WORKDIR owned
//! by root), mounts a writable tmpfs on each declared VOLUME and nothing else, then runs the node there as the
//! image's USER through `setpriv` with no capabilities and no new privileges — Kubernetes' `runAsUser`,
//! `readOnlyRootFilesystem`, `drop: [ALL]` and `allowPrivilegeEscalation: false`. The environment is read from
//! `ops/compose.yaml` (node `node1`, one-shot `migrate`) and the Kubernetes ConfigMap, Deployment and Job
//! themselves, on top of the image's ENV; only addresses and secrets are replaced, for a throwaway Redis and
//! Postgres. One node runs with the compose environment, the other with the Kubernetes one. Needs root (mount
//! namespaces, setpriv); otherwise it says so and skips.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use common::frame::{kinds, Attrs};
use serde_norway::Value as Yaml;
use tests::client::{TestClient, WAIT};
use tests::procs::{free_port, scratch_dir, Postgres, Redis};
use tests::TestUser;

use crate::ops::{read, repo, yaml, yaml_documents};

/// The runtime stage of the `Dockerfile`, as far as it shapes the running process.
#[derive(Debug)]
pub(crate) struct Image {
    pub uid: u32,
    pub gid: u32,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    /// Declared writable paths (VOLUME).
    pub volumes: Vec<String>,
    pub entrypoint: Vec<String>,
    /// `COPY --from=<stage> <source> <destination>` of the runtime stage, as (stage, destination).
    pub copies: Vec<(String, String)>,
}

/// PATH of the Debian base image (the runtime stage does not change it).
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Image {
    /// Parses the last stage of the repository's `Dockerfile`. Only the instruction forms the file uses are
    /// understood; anything else in the runtime stage fails, so the test cannot silently drift from the image.
    pub(crate) fn from_dockerfile() -> Image {
        let text = read("Dockerfile");
        let mut instructions: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => current.push_str(&format!("{} ", part.trim())),
                None => {
                    current.push_str(trimmed);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        let last_from = instructions
            .iter()
            .rposition(|i| i.starts_with("FROM "))
            .expect("a FROM in the Dockerfile");
        let mut image = Image {
            uid: 0,
            gid: 0,
            workdir: "/".into(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            entrypoint: Vec::new(),
            copies: Vec::new(),
        };
        let json_list = |text: &str| -> Vec<String> {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON list: {text}: {e}"))
        };
        for instruction in &instructions[last_from + 1..] {
            let (keyword, rest) = instruction
                .split_once(' ')
                .unwrap_or((instruction.as_str(), ""));
            let rest = rest.trim();
            match keyword {
                "USER" => {
                    let (uid, gid) = rest.split_once(':').expect("USER uid:gid");
                    image.uid = uid.parse().expect("a numeric uid");
                    image.gid = gid.parse().expect("a numeric gid");
                }
                "WORKDIR" => image.workdir = rest.to_string(),
                "ENV" => {
                    for pair in rest.split_whitespace() {
                        let (key, value) = pair.split_once('=').expect("ENV key=value");
                        assert!(
                            !value.contains(['"', '\'', '$']),
                            "ENV {key}: quoting and expansion are not understood by this test"
                        );
                        image.env.insert(key.to_string(), value.to_string());
                    }
                }
                "VOLUME" => image.volumes = json_list(rest),
                "ENTRYPOINT" => image.entrypoint = json_list(rest),
                "COPY" => {
                    let parts: Vec<&str> = rest.split_whitespace().collect();
                    let stage = parts[0]
                        .strip_prefix("--from=")
                        .expect("the runtime stage copies only from build stages");
                    image
                        .copies
                        .push((stage.to_string(), parts[parts.len() - 1].to_string()));
                }
                "RUN" | "EXPOSE" | "STOPSIGNAL" => {}
                other => panic!("Dockerfile runtime stage: {other} is not understood by this test"),
            }
        }
        assert!(image.uid != 0, "the image must not run as root");
        image
    }

    /// Where the runtime stage copies the output of build stage `stage`.
    pub(crate) fn copied_from(&self, stage: &str) -> &str {
        &self
            .copies
            .iter()
            .find(|(from, _)| from == stage)
            .unwrap_or_else(|| panic!("the image copies nothing from stage {stage}"))
            .1
    }

    /// A path as the process sees it (relative paths resolve against WORKDIR).
    pub(crate) fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.workdir.trim_end_matches('/'))
        }
    }
}

/// A compose service's environment and command (merge keys applied).
fn compose_service(name: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let compose = yaml("ops/compose.yaml");
    let service = &compose["services"][name];
    assert!(service.is_mapping(), "compose has no service {name}");
    let env = string_map(
        &service["environment"],
        &format!("compose {name} environment"),
    );
    let command = service["command"]
        .as_sequence()
        .map(|parts| {
            parts
                .iter()
                .map(|p| p.as_str().expect("command part").to_string())
                .collect()
        })
        .unwrap_or_default();
    (env, command)
}

fn string_map(value: &Yaml, what: &str) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .unwrap_or_else(|| panic!("{what} is not a mapping"))
        .iter()
        .map(|(key, value)| {
            let key = key.as_str().expect("a string key").to_string();
            let value = match value {
                Yaml::String(text) => text.clone(),
                other => panic!(
                    "{what}: {key} is {other:?}; quote it (compose and Kubernetes want strings)"
                ),
            };
            (key, value)
        })
        .collect()
}

/// The Kubernetes objects of `ops/k8s`, by `Kind/name`.
fn kubernetes_objects() -> BTreeMap<String, Yaml> {
    let mut objects = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("ops/k8s")).expect("ops/k8s") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name == "kustomization.yaml" || !name.ends_with(".yaml") {
            continue;
        }
        for document in yaml_documents(&format!("ops/k8s/{name}")) {
            let kind = document["kind"].as_str().expect("kind").to_string();
            let object = document["metadata"]["name"]
                .as_str()
                .expect("name")
                .to_string();
            objects.insert(format!("{kind}/{object}"), document);
        }
    }
    objects
}

/// The environment and arguments the kubelet gives the first container of `workload`'s pod template: its
/// `envFrom` ConfigMaps and Secrets (the Secret from `secret.example.yaml`: placeholders the test replaces) and its
/// `env` entries, with `metadata.name` filled in as `pod_name`.
fn kubernetes_container(workload: &str, pod_name: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let objects = kubernetes_objects();
    let secret = |name: &str| -> BTreeMap<String, String> {
        let secret = &objects[&format!("Secret/{name}")];
        string_map(&secret["stringData"], "secret stringData")
    };
    let container = &objects[workload]["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let config = &objects[&format!("ConfigMap/{name}")];
            env.extend(string_map(&config["data"], "configmap data"));
        } else if let Some(name) = source["secretRef"]["name"].as_str() {
            env.extend(secret(name));
        } else {
            panic!("{workload}: envFrom {source:?} is not understood by this test");
        }
    }
    for entry in container["env"].as_sequence().into_iter().flatten() {
        let name = entry["name"].as_str().expect("env name").to_string();
        let value = if let Some(value) = entry["value"].as_str() {
            value.to_string()
        } else if entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod_name.to_string()
        } else if let Some(key) = entry["valueFrom"]["secretKeyRef"]["key"].as_str() {
            let name = entry["valueFrom"]["secretKeyRef"]["name"]
                .as_str()
                .expect("secret name");
            secret(name)[key].clone()
        } else {
            panic!("{workload}: env {name} is not understood by this test");
        };
        env.insert(name, value);
    }
    let args = container["args"]
        .as_sequence()
        .map(|parts| {
            parts
                .iter()
                .map(|p| p.as_str().expect("arg").to_string())
                .collect()
        })
        .unwrap_or_default();
    (env, args)
}

/// The image's ENV under the manifest's environment (a container's environment overrides the image's), then the
/// test's replacements for addresses and secrets. Every replaced setting must be one the files set (so a renamed
/// setting fails here instead of running on a default), and nothing may be left for compose to interpolate.
fn environment(
    image: &Image,
    manifest: BTreeMap<String, String>,
    replacements: &[(&str, String)],
    what: &str,
) -> BTreeMap<String, String> {
    let mut env = image.env.clone();
    env.extend(manifest);
    for (key, value) in replacements {
        assert!(
            env.contains_key(*key),
            "{what}: the test replaces {key}, which neither the image nor the manifest sets"
        );
        env.insert(key.to_string(), value.clone());
    }
    for (key, value) in &env {
        assert!(
            !value.contains("${"),
            "{what}: {key}={value} needs interpolation; the test must replace it"
        );
    }
    env.insert("PATH".into(), IMAGE_PATH.into());
    env
}

/// Builds the release node once per test process (`IM_NODE_RELEASE_BIN` names a prebuilt one).
fn release_node() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("IM_NODE_RELEASE_BIN") {
                return Ok(PathBuf::from(path));
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--release", "-q", "-p", "node", "--bin", "node"])
                .current_dir(repo())
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("building the release node failed".into());
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| repo().join("target"));
            Ok(target.join("release").join("node"))
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

/// Assembles the image's file system in a private mount namespace and runs `$@` in it as the image's user. Its
/// arguments: mount point, release binary, its path in the image, built web client, its path in the image,
/// WORKDIR, uid:gid, the writable paths, `--`, the command.
const SANDBOX: &str = r#"
root=$1 binary=$2 binary_at=$3 web=$4 web_at=$5 workdir=$6 ids=$7
shift 7
writable=""
while [ "$1" != "--" ]; do writable="$writable $1"; shift; done
shift
ro_bind() { mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; }
mount -t tmpfs -o mode=0755 im-image "$root"
mkdir "$root/usr" "$root/etc" "$root/proc" "$root/dev"
ro_bind /usr "$root/usr"
ro_bind /etc "$root/etc"
for dir in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$dir" ]; then ln -s "$(readlink "/$dir")" "$root/$dir"
  elif [ -d "/$dir" ]; then mkdir "$root/$dir"; ro_bind "/$dir" "$root/$dir"; fi
done
# /usr/local holds only the binary, as in the image.
mount -t tmpfs -o mode=0755 im-usr-local "$root/usr/local"
mkdir -p "$root$(dirname "$binary_at")"
: >"$root$binary_at"
ro_bind "$binary" "$root$binary_at"
mount -o remount,ro "$root/usr/local"
mount --rbind /proc "$root/proc"
mount -t tmpfs -o mode=0755 im-dev "$root/dev"
for device in null zero full random urandom; do
  : >"$root/dev/$device"
  mount --bind "/dev/$device" "$root/dev/$device"
done
mount -o remount,ro "$root/dev"
mkdir -p "$root$workdir" "$root$web_at"
ro_bind "$web" "$root$web_at"
for path in $writable; do
  mkdir -p "$root$path"
  mount -t tmpfs -o mode=1777 im-writable "$root$path"
done
mount -o remount,ro "$root"
exec unshare --root="$root" --wd="$workdir" setpriv --reuid="${ids%%:*}" --regid="${ids##*:}" --clear-groups \
  --no-new-privs --bounding-set=-all --inh-caps=-all -- "$@"
"#;

/// What every sandboxed process shares: the image description, the release binary and the built web client.
struct Conditions {
    image: Image,
    binary: PathBuf,
    web: PathBuf,
    dir: PathBuf,
}

/// A process running under the image's conditions; killed on drop.
struct Contained {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Conditions {
    /// Starts `args` (the image's ENTRYPOINT is prepended) with `env`, under the image's conditions.
    fn spawn(&self, name: &str, args: &[String], env: &BTreeMap<String, String>) -> Contained {
        let root = self.dir.join(format!("{name}-root"));
        std::fs::create_dir_all(&root).expect("a mount point");
        let log = self.dir.join(format!("{name}.log"));
        let output = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--", "sh", "-euc", SANDBOX, "sandbox"])
            .arg(&root)
            .arg(&self.binary)
            .arg(&self.image.entrypoint[0])
            .arg(&self.web)
            .arg(self.image.copied_from("web"))
            .arg(&self.image.workdir)
            .arg(format!("{}:{}", self.image.uid, self.image.gid))
            .args(&self.image.volumes)
            .arg("--")
            .args(&self.image.entrypoint)
            .args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log fd"))
            .stderr(output);
        // SAFETY: prctl is async-signal-safe. The signal survives the exec chain until setpriv changes the uid;
        // `Contained`'s drop kills the process otherwise.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("starting unshare");
        Contained {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }
}

impl Contained {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the exit; its code, or an error with the log.
    fn wait(&mut self, limit: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().ok_or_else(|| anyhow!("not running"))?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return status
                    .code()
                    .ok_or_else(|| anyhow!("{} killed by a signal:\n{}", self.name, self.logs()));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still running after {limit:?}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid (the exec chain keeps it: the node is that process).
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One GET; status, content type and body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, Vec<u8>)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, content_type, body))
}

/// Waits until the node's admin listener answers `/readyz` with 200.
async fn wait_ready(node: &mut Contained, admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(get(admin, "/readyz").await, Ok((200, _, _))) {
            return Ok(());
        }
        if !node.is_running() {
            bail!("{} exited during start:\n{}", node.name, node.logs());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready on {admin} in 30 s:\n{}",
                node.name,
                node.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn user(addr: SocketAddr, name: &str) -> anyhow::Result<TestUser> {
    let name = format!("{name}-{:08x}", rand::random::<u32>());
    let password = "correct horse battery";
    let id = benchmarks::client::register(addr, &name, password).await?;
    let token = benchmarks::client::login(addr, &name, password).await?;
    Ok(TestUser { id, name, token })
}

async fn api(
    addr: SocketAddr,
    user: &TestUser,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, value) =
        benchmarks::client::http_json_auth(addr, method, path, Some(&user.token), body).await?;
    Ok((status.as_u16(), value))
}

fn png() -> Vec<u8> {
    let image = image::RgbImage::from_fn(320, 200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding a PNG");
    out.into_inner()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn the_release_node_runs_as_the_image_and_the_manifests_run_it() {
    if !is_root() {
        eprintln!(
            "SKIPPED deployment::the_release_node_runs_as_the_image_and_the_manifests_run_it: it needs root \
             (mount namespaces and setpriv build the image's conditions); run the suite as root, as ops/test.sh does"
        );
        return;
    }
    let started = Instant::now();
    let image = Image::from_dockerfile();
    assert!(
        image.entrypoint[0].starts_with("/usr/local/"),
        "the sandbox puts the binary under /usr/local"
    );
    let web_at = image.copied_from("web").to_string();
    assert_eq!(
        image.absolute(&image.env["IM_WEB_DIR"]),
        web_at,
        "IM_WEB_DIR points where the image copies the web client"
    );
    crate::web::ensure_tools(false).await.unwrap();
    let dir = scratch_dir("deployment");
    let web = dir.join("web-dist");
    crate::web::build_web(&web, false).await.unwrap();
    let binary = tokio::task::spawn_blocking(release_node)
        .await
        .unwrap()
        .unwrap();
    let built = started.elapsed();
    let conditions = Conditions {
        image,
        binary,
        web,
        dir,
    };
    let image = &conditions.image;

    let redis = Redis::start().unwrap();
    let postgres = tokio::task::spawn_blocking(Postgres::shared)
        .await
        .unwrap()
        .unwrap();
    let database = postgres.new_database().await.unwrap();
    let secret = format!("{:064x}", rand::random::<u128>());

    // Migrations as compose runs them (the one-shot service), then as the Kubernetes Job does (nothing left).
    let (migrate_env, migrate_command) = compose_service("migrate");
    assert_eq!(migrate_command, ["migrate"]);
    let env = environment(
        image,
        migrate_env,
        &[("IM_POSTGRES_URL", database.clone())],
        "compose migrate",
    );
    let mut migrate = conditions.spawn("compose-migrate", &migrate_command, &env);
    let code = migrate.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, 0, "compose migrate failed:\n{}", migrate.logs());
    assert!(
        migrate.logs().contains("migrations applied"),
        "{}",
        migrate.logs()
    );
    let (job_env, job_args) = kubernetes_container("Job/im-migrate", "im-migrate-x7k2p");
    assert_eq!(job_args, ["migrate"]);
    let env = environment(
        image,
        job_env,
        &[("IM_POSTGRES_URL", database.clone())],
        "kubernetes migration job",
    );
    let mut job = conditions.spawn("k8s-migrate", &job_args, &env);
    let code = job.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, 0, "kubernetes migration job failed:\n{}", job.logs());

    // Node 0 with the compose environment, node 1 with the Kubernetes one.
    let listen: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let admin: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let replacements = |index: usize| {
        vec![
            ("IM_REDIS_URL", redis.url()),
            ("IM_POSTGRES_URL", database.clone()),
            ("IM_TOKEN_SECRET", secret.clone()),
            ("IM_LISTEN", listen[index].to_string()),
            ("IM_ADMIN_LISTEN", admin[index].to_string()),
        ]
    };
    let (compose_env, compose_command) = compose_service("node1");
    let compose_env = environment(image, compose_env, &replacements(0), "compose node1");
    let (k8s_env, k8s_args) = kubernetes_container("Deployment/im-node", "im-node-5d8c7b9f4-q2x8z");
    let k8s_env = environment(image, k8s_env, &replacements(1), "kubernetes im-node");
    for env in [&compose_env, &k8s_env] {
        assert_eq!(
            env.get("IM_RUN_MIGRATIONS").map(String::as_str),
            Some("false"),
            "the nodes leave migrations to the migration step"
        );
    }
    let mut nodes = vec![
        conditions.spawn("compose-node1", &compose_command, &compose_env),
        conditions.spawn("k8s-node", &k8s_args, &k8s_env),
    ];
    for (index, node) in nodes.iter_mut().enumerate() {
        wait_ready(node, admin[index]).await.unwrap();
    }

    // Every node serves the web client on the client port; metrics only on the admin port.
    for index in 0..2 {
        let (status, _, html) = get(listen[index], "/").await.unwrap();
        let html = String::from_utf8_lossy(&html).into_owned();
        assert_eq!(
            status,
            200,
            "node {index} serves no web client:\n{}",
            nodes[index].logs()
        );
        assert!(html.contains("<div id=\"app\">"), "{html}");
        let script = html
            .split("src=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("index.html loads a script");
        let (status, content_type, _) = get(listen[index], script).await.unwrap();
        assert_eq!(
            (status, content_type.starts_with("text/javascript")),
            (200, true),
            "{script}"
        );
        let (_, _, metrics) = get(admin[index], "/metrics").await.unwrap();
        assert!(String::from_utf8_lossy(&metrics).contains("im_connections_open"));
        let (_, _, public) = get(listen[index], "/metrics").await.unwrap();
        assert!(
            !String::from_utf8_lossy(&public).contains("# TYPE"),
            "node {index} serves /metrics on its client port"
        );
    }

    // Two users befriend across the nodes and talk: a on node 0, b on node 1.
    let a = user(listen[0], "deploya").await.unwrap();
    let b = user(listen[1], "deployb").await.unwrap();
    let (status, body) = api(
        listen[0],
        &a,
        "POST",
        "/v1/friends/requests",
        Some(serde_json::json!({"user": b.id, "note": "hi"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let request = body["id"].as_i64().expect("request id");
    let (status, body) = api(
        listen[1],
        &b,
        "POST",
        &format!("/v1/friends/requests/{request}/accept"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut ca = TestClient::connect(listen[0], &a, "phone").await.unwrap();
    let mut cb = TestClient::connect(listen[1], &b, "laptop").await.unwrap();
    let ack = ca
        .send_and_ack(b.id, "d1", "hello from compose")
        .await
        .unwrap();
    cb.wait_messages(ack.conv, 1, WAIT).await.unwrap();
    let reply = cb
        .send_and_ack(a.id, "d2", "hello from kubernetes")
        .await
        .unwrap();
    assert_eq!(reply.conv, ack.conv);
    ca.wait_messages(ack.conv, 2, WAIT).await.unwrap();

    // An upload taken by node 0 is served by node 1: neither node can keep bytes on its own disk.
    let picture = png();
    let (status, uploaded) = benchmarks::client::http_raw(
        listen[0],
        "POST",
        "/v1/media",
        Some(&a.token),
        "image/png",
        picture.clone().into(),
    )
    .await
    .unwrap();
    assert_eq!(
        status.as_u16(),
        201,
        "upload: {}\n{}",
        String::from_utf8_lossy(&uploaded),
        nodes[0].logs()
    );
    let uploaded: serde_json::Value = serde_json::from_slice(&uploaded).unwrap();
    let hash = uploaded["hash"].as_str().expect("hash").to_string();
    let attrs = Attrs {
        media: Some(hash.clone()),
        ..Attrs::default()
    };
    let ack = ca
        .send_to_conv_or_user(b.id, "d3", kinds::IMAGE, "the view", Some(attrs))
        .await
        .unwrap();
    cb.wait_messages(ack.conv, 3, WAIT).await.unwrap();
    for suffix in ["", "/thumb"] {
        let (status, bytes) = benchmarks::client::http_raw(
            listen[1],
            "GET",
            &format!("/v1/media/{hash}{suffix}"),
            Some(&b.token),
            "application/json",
            Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            status.as_u16(),
            200,
            "download {suffix:?} from the other node:\n{}",
            nodes[1].logs()
        );
        if suffix.is_empty() {
            assert!(bytes[..] == picture[..], "the downloaded bytes differ");
        }
    }

    // The image's STOPSIGNAL drains and exits 0 under the same conditions.
    drop((ca, cb));
    for node in &nodes {
        node.signal(libc::SIGTERM);
    }
    for node in &mut nodes {
        let code = node.wait(Duration::from_secs(20)).unwrap();
        assert_eq!(
            code,
            0,
            "{} did not drain cleanly:\n{}",
            node.name,
            node.logs()
        );
    }
    eprintln!(
        "deployment conditions: web client and release node ready in {built:?}, whole run {:?}",
        started.elapsed()
    );
}

#[test]
fn help_shows_no_secret_values() {
    let binary = release_node().unwrap();
    let secrets = [
        (
            "IM_TOKEN_SECRET",
            "token-secret-e3b0c44298fc1c149afbf4c8996fb924",
        ),
        (
            "IM_POSTGRES_URL",
            "host=db user=im password=pg-password-5f2b dbname=im",
        ),
        ("IM_REDIS_URL", "redis://:redis-password-9c1d@redis:6379"),
        (
            "IM_PUSH_WEBHOOK_URL",
            "http://hooks.internal/hook-token-77ab",
        ),
        (
            "IM_TOKEN_KEYS",
            "k2:token-key-two-4c2e,k1:token-key-one-8d1a",
        ),
        ("IM_S3_SECRET_ACCESS_KEY", "s3-secret-key-0b7e91d4"),
    ];
    for args in [
        &["--help"][..],
        &["migrate", "--help"][..],
        &["media", "import", "--help"][..],
    ] {
        let output = Command::new(&binary)
            .args(args)
            .env_clear()
            .envs(secrets)
            .output()
            .unwrap();
        assert!(output.status.success(), "node {args:?} failed");
        let help = String::from_utf8_lossy(&output.stdout);
        if args == ["--help"] {
            // The settings are listed, only their values are not.
            assert!(help.contains("[env: IM_POSTGRES_URL]"), "{help}");
        }
        for (name, value) in secrets {
            for part in value
                .split([' ', ',', ':', '@', '/', '='])
                .filter(|p| p.len() > 8)
            {
                assert!(
                    !help.contains(part),
                    "node {args:?} shows {name}'s value ({part}):\n{help}"
                );
            }
        }
    }
}
