//! The Kubernetes manifests in deploy/kubernetes/: parsed as YAML and checked against each
//! other, against the config they ship (which must load) and against the Dockerfile. The
//! fleet-mode directory deploy/kubernetes/fleet/ is checked too: its copies of the base, its
//! `[cluster]` config (which must load) and the example
//! etcd it points at.
//!
//! YAML is parsed with serde_yaml_ng (a maintained fork of serde_yaml).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use serde_yaml_ng as serde_yaml;

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// The fleet-mode manifests (deploy/kubernetes/fleet/), checked by the `fleet_*` and `etcd_*`
/// tests below.
fn fleet_dir() -> PathBuf {
    manifest_dir().join("fleet")
}

/// Every YAML document of every `*.yaml` / `*.yml` file directly in `dir`, with its file.
fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The parsed manifests, one per kind (each kind must appear exactly once).
struct Manifests {
    by_kind: BTreeMap<String, (String, Value)>,
}

impl Manifests {
    fn load() -> Self {
        Self::of(documents(&manifest_dir()))
    }

    /// The fleet directory's switchyard objects (those named `app.kubernetes.io/name:
    /// switchyard`), leaving out the etcd example's.
    fn load_fleet() -> Self {
        let docs = documents(&fleet_dir())
            .into_iter()
            .filter(|(_, doc)| {
                doc["kind"].as_str() != Some("Kustomization")
                    && string_map(&doc["metadata"]["labels"])
                        .get("app.kubernetes.io/name")
                        .map(String::as_str)
                        == Some("switchyard")
            })
            .collect();
        Self::of(docs)
    }

    fn of(docs: Vec<(String, Value)>) -> Self {
        let mut by_kind = BTreeMap::new();
        for (file, doc) in docs {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document without `kind`"))
                .to_string();
            if let Some((other, _)) = by_kind.insert(kind.clone(), (file.clone(), doc)) {
                panic!("two {kind} documents ({other}, {file}): the test expects one");
            }
        }
        Manifests { by_kind }
    }

    fn get(&self, kind: &str) -> &Value {
        &self
            .by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} among the manifests"))
            .1
    }

    fn deployment(&self) -> &Value {
        self.get("Deployment")
    }

    fn pod_spec(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod_spec()["containers"]
            .as_sequence()
            .expect("containers");
        containers
            .iter()
            .find(|c| c["name"].as_str() == Some("switchyard"))
            .expect("a container named switchyard")
    }

    fn template_labels(&self) -> BTreeMap<String, String> {
        string_map(&self.deployment()["spec"]["template"]["metadata"]["labels"])
    }

    /// The `--config` argument of the container.
    fn config_arg(&self) -> String {
        let args = strings(&self.container()["args"]);
        let i = args
            .iter()
            .position(|a| a == "--config")
            .expect("the container passes --config");
        args.get(i + 1).expect("a path after --config").clone()
    }

    /// The ConfigMap's `switchyard.toml` (whatever key --config points at).
    fn config_text(&self) -> (String, String) {
        let arg = self.config_arg();
        let key = Path::new(&arg)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = self.get("ConfigMap")["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no data key {key:?} (--config {arg})"))
            .to_string();
        (arg, text)
    }

    /// Named container ports: name -> number.
    fn container_ports(&self) -> BTreeMap<String, u64> {
        self.container()["ports"]
            .as_sequence()
            .expect("container ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().expect("every port is named").to_string(),
                    p["containerPort"].as_u64().expect("containerPort"),
                )
            })
            .collect()
    }

    /// A probe's or Service's port (a name or a number) as a number.
    fn resolve_port(&self, port: &Value) -> u64 {
        match port {
            Value::Number(n) => n.as_u64().expect("a port number"),
            Value::String(name) => *self
                .container_ports()
                .get(name)
                .unwrap_or_else(|| panic!("no container port named {name:?}")),
            other => panic!("not a port: {other:?}"),
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => panic!("label/annotation {k:?}: not a string: {other:?}"),
                    };
                    (k.as_str().expect("a string key").to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// `admin.token_env` of the shipped config.
fn token_env(config_text: &str) -> String {
    let raw: toml::Value = toml::from_str(config_text).expect("switchyard.toml is TOML");
    raw["admin"]["token_env"]
        .as_str()
        .expect("admin.token_env is set (a non-loopback admin needs a token)")
        .to_string()
}

fn load_config(m: &Manifests) -> switchyard::config::Config {
    let (path, text) = m.config_text();
    let var = token_env(&text);
    let env = move |name: &str| (name == var).then(|| "test-token".to_string());
    switchyard::config::parse_with_env(&text, Path::new(&path), &env)
        .unwrap_or_else(|e| panic!("the ConfigMap's switchyard.toml does not load:\n{e}"))
}

/// `resources` of the kustomization.yaml in `dir`, sorted, against the YAML files next to it.
fn assert_kustomization_lists_every_file(dir: &Path) {
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut listed = strings(&k["resources"]);
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(
        listed,
        files,
        "{}: kustomization.yaml resources vs the files",
        dir.display()
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    assert_kustomization_lists_every_file(&manifest_dir());
}

#[test]
fn every_object_carries_the_app_label() {
    let m = Manifests::load();
    for (kind, (file, doc)) in &m.by_kind {
        if kind == "Kustomization" {
            continue;
        }
        let labels = string_map(&doc["metadata"]["labels"]);
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some("switchyard"),
            "{file}: {kind} lacks app.kubernetes.io/name: switchyard"
        );
    }
    let selector = string_map(&m.deployment()["spec"]["selector"]["matchLabels"]);
    assert_eq!(
        selector.get("app.kubernetes.io/name").map(String::as_str),
        Some("switchyard")
    );
    assert!(
        is_subset(&selector, &m.template_labels()),
        "the Deployment's selector must match its pod template labels"
    );
}

#[test]
fn deployment_has_three_replicas_and_a_surge_only_rollout() {
    let m = Manifests::load();
    let spec = &m.deployment()["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    assert_eq!(spec["strategy"]["type"].as_str(), Some("RollingUpdate"));
    let ru = &spec["strategy"]["rollingUpdate"];
    assert_eq!(ru["maxUnavailable"].as_u64(), Some(0));
    assert_eq!(ru["maxSurge"].as_u64(), Some(1));
}

#[test]
fn config_map_is_mounted_as_a_directory_where_config_points() {
    let m = Manifests::load();
    let cm_name = m.get("ConfigMap")["metadata"]["name"]
        .as_str()
        .expect("ConfigMap name");
    let args = strings(&m.container()["args"]);
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args replace the image's CMD; the ENTRYPOINT is the binary"
    );
    let config_arg = m.config_arg();

    let volume = m.pod_spec()["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(cm_name))
        .expect("a volume of the ConfigMap");
    let volume_name = volume["name"].as_str().unwrap();
    let key = Path::new(&config_arg)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    if let Some(items) = volume["configMap"]["items"].as_sequence() {
        assert!(
            items
                .iter()
                .any(|i| i["key"].as_str() == Some(key) && i["path"].as_str() == Some(key)),
            "the volume's items leave out {key}"
        );
    }

    let mounts: Vec<&Value> = m.container()["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter(|vm| vm["name"].as_str() == Some(volume_name))
        .collect();
    assert_eq!(mounts.len(), 1, "the config volume is mounted once");
    let mount = mounts[0];
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "no subPath: a subPath mount never sees ConfigMap updates, so hot reload would not either"
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let dir = mount["mountPath"].as_str().expect("mountPath");
    assert_eq!(
        Path::new(&config_arg),
        Path::new(dir).join(key),
        "--config must name the file inside the mounted directory"
    );
}

#[test]
fn dockerfile_cmd_uses_the_same_config_path() {
    let m = Manifests::load();
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("a CMD line");
    assert!(
        cmd.contains(&format!("\"{}\"", m.config_arg())),
        "the Dockerfile's CMD ({cmd}) and the Deployment disagree on the config path"
    );
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/switchyard\"]"));
    // The image checks itself with the binary (distroless has no curl), on the same file.
    let health = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK "))
        .nth(1)
        .expect("a HEALTHCHECK with its CMD on the next line");
    assert!(health.contains("\"ready\""), "{health}");
    assert!(
        health.contains(&format!("\"{}\"", m.config_arg())),
        "{health}"
    );
}

#[test]
fn probes_hit_the_admin_port() {
    let m = Manifests::load();
    let config = load_config(&m);
    let admin_port = u64::from(config.admin.listen.port());
    let ports = m.container_ports();
    assert_eq!(
        ports.get("admin"),
        Some(&admin_port),
        "container port admin"
    );
    assert_eq!(
        ports.get("http"),
        Some(&u64::from(config.server.listen.port())),
        "container port http"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &m.container()[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(m.resolve_port(&get["port"]), admin_port, "{probe} port");
    }
}

#[test]
fn admin_token_comes_from_the_secret_named_by_token_env() {
    let m = Manifests::load();
    let (_, text) = m.config_text();
    let var = token_env(&text);
    let secret = m.get("Secret");
    let secret_name = secret["metadata"]["name"].as_str().expect("Secret name");
    let has_key =
        !secret["stringData"][var.as_str()].is_null() || !secret["data"][var.as_str()].is_null();
    assert!(has_key, "the Secret has no key {var:?} (admin.token_env)");

    let container = m.container();
    let from_env = container["env"].as_sequence().is_some_and(|env| {
        env.iter().any(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            e["name"].as_str() == Some(var.as_str())
                && r["name"].as_str() == Some(secret_name)
                && r["key"].as_str() == Some(var.as_str())
        })
    });
    let from_env_from = container["envFrom"].as_sequence().is_some_and(|all| {
        all.iter()
            .any(|e| e["secretRef"]["name"].as_str() == Some(secret_name) && e["prefix"].is_null())
    });
    assert!(
        from_env || from_env_from,
        "the container does not get {var} from Secret {secret_name}"
    );
}

#[test]
fn shipped_config_loads_and_suits_a_read_only_mount() {
    let m = Manifests::load();
    let config = load_config(&m);
    assert!(
        !config.admin.persist,
        "a ConfigMap mount is read-only: admin.persist must be false"
    );
    assert!(
        !config.admin.listen.ip().is_loopback(),
        "probes and Prometheus reach the admin listener from outside the pod"
    );
    assert!(config.admin.token.is_some());
    let (_, text) = m.config_text();
    let missing =
        switchyard::config::parse_with_env(&text, Path::new("switchyard.toml"), &|_| None);
    assert!(
        missing.is_err(),
        "without the token variable the config must not load"
    );
}

#[test]
fn termination_grace_covers_pre_stop_and_shutdown_grace() {
    let m = Manifests::load();
    let config = load_config(&m);
    let grace = m.pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = &m.container()["lifecycle"]["preStop"];
    let sleep = pre_stop["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep, so endpoints are removed before SIGTERM");
    assert!(sleep > 0);
    let needed = sleep + config.server.shutdown_grace.as_secs();
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + shutdown_grace"
    );
}

#[test]
fn runs_unprivileged_on_a_read_only_root() {
    let m = Manifests::load();
    let pod = &m.pod_spec()["securityContext"];
    let c = &m.container()["securityContext"];
    assert!(
        pod["runAsNonRoot"].as_bool() == Some(true) || c["runAsNonRoot"].as_bool() == Some(true)
    );
    assert_eq!(c["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(c["allowPrivilegeEscalation"].as_bool(), Some(false));
    let res = &m.container()["resources"];
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(!res[kind][r].is_null(), "resources.{kind}.{r}");
        }
    }
}

#[test]
fn pdb_keeps_two_of_the_deployments_pods() {
    let m = Manifests::load();
    let pdb = m.get("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(2));
    let selector = string_map(&pdb["spec"]["selector"]["matchLabels"]);
    assert!(!selector.is_empty(), "the PDB selects by labels");
    assert!(
        is_subset(&selector, &m.template_labels()),
        "the PDB must select the Deployment's pods"
    );
    assert_eq!(
        selector,
        string_map(&m.deployment()["spec"]["selector"]["matchLabels"])
    );
}

#[test]
fn service_sends_port_80_to_http_and_never_exposes_admin() {
    let m = Manifests::load();
    let config = load_config(&m);
    let svc = m.get("Service");
    let selector = string_map(&svc["spec"]["selector"]);
    assert!(!selector.is_empty() && is_subset(&selector, &m.template_labels()));
    let ports = svc["spec"]["ports"].as_sequence().expect("Service ports");
    let http = ports
        .iter()
        .find(|p| p["port"].as_u64() == Some(80))
        .expect("a Service port 80");
    assert_eq!(
        m.resolve_port(&http["targetPort"]),
        u64::from(config.server.listen.port()),
        "port 80 must reach server.listen"
    );
    let admin = u64::from(config.admin.listen.port());
    for p in ports {
        assert_ne!(
            m.resolve_port(&p["targetPort"]),
            admin,
            "the admin port must not be behind the traffic Service"
        );
    }
}

#[test]
fn pods_are_annotated_for_prometheus() {
    let m = Manifests::load();
    let config = load_config(&m);
    let a = string_map(&m.deployment()["spec"]["template"]["metadata"]["annotations"]);
    assert_eq!(
        a.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        a.get("prometheus.io/port"),
        Some(&config.admin.listen.port().to_string())
    );
    assert_eq!(
        a.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

// --- Fleet mode: deploy/kubernetes/fleet/ --------------------------------------------------

/// Every document of the fleet directory, for lookups by kind and name (it holds several
/// Services and PodDisruptionBudgets).
struct FleetDocs(Vec<(String, Value)>);

impl FleetDocs {
    fn load() -> Self {
        FleetDocs(documents(&fleet_dir()))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|(_, d)| d["kind"].as_str() == Some(kind))
            .map(|(_, d)| d)
            .collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|d| d["metadata"]["name"].as_str() == Some(name))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{kind} {name} in fleet/: expected exactly one"
        );
        found[0]
    }

    fn statefulset(&self) -> &Value {
        let all = self.all("StatefulSet");
        assert_eq!(all.len(), 1, "one etcd StatefulSet in fleet/");
        all[0]
    }

    fn sts_name(&self) -> &str {
        self.statefulset()["metadata"]["name"].as_str().unwrap()
    }

    fn etcd_labels(&self) -> BTreeMap<String, String> {
        string_map(&self.statefulset()["spec"]["template"]["metadata"]["labels"])
    }

    fn etcd_container(&self) -> &Value {
        let containers = self.statefulset()["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("StatefulSet containers");
        containers
            .iter()
            .find(|c| c["name"].as_str() == Some("etcd"))
            .expect("a container named etcd")
    }

    /// The value of the etcd container's `--flag=value` argument.
    fn flag(&self, flag: &str) -> String {
        let prefix = format!("--{flag}=");
        let found: Vec<String> = strings(&self.etcd_container()["args"])
            .into_iter()
            .filter_map(|a| a.strip_prefix(&prefix).map(str::to_string))
            .collect();
        assert_eq!(found.len(), 1, "etcd is given --{flag}= once: {found:?}");
        found[0].clone()
    }

    /// The etcd container's named port (a name or a number) as a number.
    fn etcd_port(&self, port: &Value) -> u64 {
        match port {
            Value::Number(n) => n.as_u64().expect("a port number"),
            Value::String(name) => self.etcd_container()["ports"]
                .as_sequence()
                .expect("etcd container ports")
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no etcd container port named {name:?}")),
            other => panic!("not a port: {other:?}"),
        }
    }

    /// The Service `name`'s port called `port_name`: (Service port, container port it reaches).
    fn service_port(&self, name: &str, port_name: &str) -> (u64, u64) {
        let svc = self.named("Service", name);
        let port = svc["spec"]["ports"]
            .as_sequence()
            .expect("Service ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(port_name))
            .unwrap_or_else(|| panic!("Service {name} has no port {port_name}"));
        let number = port["port"].as_u64().expect("Service port");
        let target = if port["targetPort"].is_null() {
            number
        } else {
            self.etcd_port(&port["targetPort"])
        };
        (number, target)
    }

    /// The headless Service that gives the members their stable DNS names.
    fn peer_service(&self) -> &Value {
        let name = self.statefulset()["spec"]["serviceName"]
            .as_str()
            .expect("StatefulSet serviceName");
        self.named("Service", name)
    }
}

/// `http://host:port` -> (host, port).
fn host_port(url: &str) -> (String, u64) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}: not http://host:port"));
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url}: no port"));
    (
        host.to_string(),
        port.trim_end_matches('/')
            .parse()
            .unwrap_or_else(|_| panic!("{url}: bad port")),
    )
}

/// `--initial-cluster`: member name -> peer URL, in order.
fn initial_cluster(f: &FleetDocs) -> Vec<(String, String)> {
    f.flag("initial-cluster")
        .split(',')
        .map(|m| {
            let (name, url) = m
                .split_once('=')
                .unwrap_or_else(|| panic!("--initial-cluster entry {m:?}: not name=url"));
            (name.to_string(), url.to_string())
        })
        .collect()
}

/// The fleet ConfigMap's switchyard.toml as TOML.
fn fleet_toml() -> toml::Value {
    let (_, text) = Manifests::load_fleet().config_text();
    toml::from_str(&text).expect("the fleet switchyard.toml is TOML")
}

/// The pod name a replica of the fleet's Deployment might have: its default `[cluster]` name.
const POD_NAME: &str = "switchyard-7d9c6b5f4-abcde";

#[test]
fn fleet_kustomization_lists_every_manifest() {
    assert_kustomization_lists_every_file(&fleet_dir());
}

#[test]
fn fleet_copies_of_the_base_manifests_match_it() {
    // The fleet directory cannot overlay its parent (kustomize refuses a base that contains
    // the overlay), so it carries copies, which must not drift from the base.
    let base = Manifests::load();
    let fleet = Manifests::load_fleet();
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "Secret"] {
        assert_eq!(
            fleet.get(kind),
            base.get(kind),
            "fleet/'s switchyard {kind} differs from the base's"
        );
    }
    assert_eq!(
        fleet.get("ConfigMap")["metadata"],
        base.get("ConfigMap")["metadata"]
    );
    let mut fleet_config = fleet_toml();
    let cluster = fleet_config
        .as_table_mut()
        .unwrap()
        .remove("cluster")
        .expect("the fleet's switchyard.toml has a [cluster] section");
    assert!(cluster.is_table());
    let (_, base_text) = base.config_text();
    let base_config: toml::Value = toml::from_str(&base_text).unwrap();
    assert_eq!(
        fleet_config, base_config,
        "the fleet's switchyard.toml must be the base's plus [cluster]"
    );
}

#[test]
fn fleet_config_leaves_the_replica_name_to_the_pod_name() {
    let config = fleet_toml();
    let cluster = &config["cluster"];
    // Every replica mounts the same file: a name in it would be every replica's name, and they
    // would share one member key and one claim on the leadership.
    assert!(
        cluster.get("name").is_none(),
        "the fleet ConfigMap must not set cluster.name"
    );
    assert_eq!(cluster["lease_ttl"].as_str(), Some("5s"));
    let prefix = cluster["prefix"].as_str().expect("cluster.prefix");
    assert!(
        prefix.starts_with('/') && !prefix.ends_with('/'),
        "{prefix}"
    );
}

/// Loads the fleet ConfigMap's switchyard.toml as a pod would see it: the token from the
/// Secret and HOSTNAME set to the pod name.
fn load_fleet_config() -> Result<switchyard::config::Config, switchyard::config::ConfigErrors> {
    let (path, text) = Manifests::load_fleet().config_text();
    let var = token_env(&text);
    let env = move |name: &str| match name {
        "HOSTNAME" => Some(POD_NAME.to_string()),
        _ if name == var => Some("test-token".to_string()),
        _ => None,
    };
    switchyard::config::parse_with_env(&text, Path::new(&path), &env)
}

#[test]
fn fleet_config_loads() {
    let config = load_fleet_config()
        .unwrap_or_else(|e| panic!("the fleet switchyard.toml does not load:\n{e}"));
    let cluster = config.cluster.expect("fleet mode: a [cluster] section");
    assert_eq!(cluster.name, POD_NAME, "the replica's name is the pod name");
    assert_eq!(cluster.lease_ttl, std::time::Duration::from_secs(5));
    assert!(!config.admin.persist, "a ConfigMap mount is read-only");
    assert!(config.admin.token.is_some());
}

#[test]
fn fleet_config_names_the_etcd_members_and_their_client_port() {
    let f = FleetDocs::load();
    let config = fleet_toml();
    let endpoints: Vec<String> = config["cluster"]["etcd"]
        .as_array()
        .expect("cluster.etcd is a list")
        .iter()
        .map(|e| e.as_str().expect("an endpoint string").to_string())
        .collect();
    assert!(!endpoints.is_empty());
    let sts = f.sts_name();
    let peer_service = f.peer_service()["metadata"]["name"].as_str().unwrap();
    let client_port = host_port(&f.flag("listen-client-urls")).1;
    let replicas = f.statefulset()["spec"]["replicas"].as_u64().unwrap();
    let mut members = Vec::new();
    for url in &endpoints {
        let (host, port) = host_port(url);
        let mut labels = host.split('.');
        let first = labels.next().unwrap();
        let second = labels.next();
        if let Some(ordinal) = first
            .strip_prefix(&format!("{sts}-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            // A member by its pod DNS name: <pod>.<headless Service>[.<namespace>...].
            assert_eq!(
                second,
                Some(peer_service),
                "{url}: not under the headless Service"
            );
            assert!(ordinal < replicas, "{url}: no such member");
            let (_, target) = f.service_port(peer_service, "client");
            assert_eq!(port, target, "{url}: not the members' client port");
            members.push(ordinal);
        } else {
            // The client Service: <service>[.<namespace>...].
            let svc = f.named("Service", first);
            assert!(
                is_subset(&string_map(&svc["spec"]["selector"]), &f.etcd_labels()),
                "{url}: Service {first} does not select the etcd members"
            );
            let (number, _) = f.service_port(first, "client");
            assert_eq!(port, number, "{url}: not Service {first}'s client port");
        }
    }
    assert_eq!(
        f.service_port(peer_service, "client").1,
        client_port,
        "the client port of the Services is not where etcd listens for clients"
    );
    if !members.is_empty() {
        members.sort();
        members.dedup();
        assert_eq!(
            members,
            (0..replicas).collect::<Vec<_>>(),
            "list every member, so the client can fail over to any of them"
        );
    }
}

#[test]
fn etcd_statefulset_members_match_its_initial_cluster() {
    let f = FleetDocs::load();
    let sts = f.statefulset();
    let name = f.sts_name();
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    assert!(
        replicas >= 3 && replicas % 2 == 1,
        "an odd member count of at least 3 keeps a quorum through the loss of one"
    );
    assert_eq!(
        sts["spec"]["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "with OrderedReady the first member waits for a quorum that never forms"
    );
    let peer = f.peer_service();
    let peer_name = peer["metadata"]["name"].as_str().unwrap();
    assert_eq!(peer["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    assert_eq!(
        peer["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "members must resolve each other before they are ready"
    );
    let (_, peer_port) = f.service_port(peer_name, "peer");
    assert_eq!(host_port(&f.flag("listen-peer-urls")).1, peer_port);

    let members = initial_cluster(&f);
    assert_eq!(
        members.len() as u64,
        replicas,
        "replicas vs --initial-cluster members"
    );
    for (i, (member, url)) in members.iter().enumerate() {
        let pod = format!("{name}-{i}");
        assert_eq!(member, &pod, "member {i} is named after its pod");
        assert_eq!(url, &format!("http://{pod}.{peer_name}:{peer_port}"));
    }
    // Each member's own name and URLs follow its pod name, as --initial-cluster spells them.
    assert_eq!(f.flag("name"), "$(POD_NAME)");
    assert_eq!(
        f.flag("initial-advertise-peer-urls"),
        format!("http://$(POD_NAME).{peer_name}:{peer_port}")
    );
    let (_, client_port) = f.service_port(peer_name, "client");
    assert_eq!(
        f.flag("advertise-client-urls"),
        format!("http://$(POD_NAME).{peer_name}:{client_port}")
    );
    let pod_name_env = f.etcd_container()["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some("POD_NAME"))
        .expect("POD_NAME in env");
    assert_eq!(
        pod_name_env["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    assert_eq!(f.flag("initial-cluster-state"), "new");
}

#[test]
fn etcd_probes_storage_and_resources() {
    let f = FleetDocs::load();
    let c = f.etcd_container();
    let metrics_port = host_port(&f.flag("listen-metrics-urls")).1;
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        let path = get["path"].as_str().unwrap_or_else(|| panic!("{probe}"));
        assert!(
            path == "/health" || path.starts_with("/health?"),
            "{probe}: {path}"
        );
        assert_eq!(f.etcd_port(&get["port"]), metrics_port, "{probe} port");
    }
    // Liveness must not need a quorum: restarting every member that lost it would not help.
    let live = c["livenessProbe"]["httpGet"]["path"].as_str().unwrap();
    assert!(live.contains("serializable=true"), "{live}");
    for r in ["cpu", "memory"] {
        assert!(!c["resources"]["requests"][r].is_null(), "requests.{r}");
    }

    let claims = f.statefulset()["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .expect("volumeClaimTemplates");
    let data_dir = f.flag("data-dir");
    let mount = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| Path::new(&data_dir).starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no volume holds --data-dir {data_dir}"));
    let claim = claims
        .iter()
        .find(|t| t["metadata"]["name"] == mount["name"])
        .expect("the data volume comes from a volumeClaimTemplate");
    assert!(!claim["spec"]["resources"]["requests"]["storage"].is_null());
}

#[test]
fn etcd_pdb_keeps_the_quorum() {
    let f = FleetDocs::load();
    let replicas = f.statefulset()["spec"]["replicas"].as_u64().unwrap();
    let pdb = f.named("PodDisruptionBudget", f.sts_name());
    let max_unavailable = pdb["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable");
    assert_eq!(max_unavailable, 1);
    assert!(replicas - max_unavailable > replicas / 2, "quorum");
    let selector = string_map(&pdb["spec"]["selector"]["matchLabels"]);
    assert!(!selector.is_empty() && is_subset(&selector, &f.etcd_labels()));
}

#[test]
fn etcd_and_switchyard_select_only_their_own_pods() {
    let f = FleetDocs::load();
    let sy = Manifests::load_fleet();
    let etcd = f.etcd_labels();
    let switchyard = sy.template_labels();
    let selectors = [
        (
            "Deployment",
            &sy.deployment()["spec"]["selector"]["matchLabels"],
        ),
        ("Service", &sy.get("Service")["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &sy.get("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ),
    ];
    // The traffic Service or the Deployment selecting etcd pods would send client traffic
    // to etcd, or adopt its pods.
    for (kind, selector) in selectors {
        assert!(
            !is_subset(&string_map(selector), &etcd),
            "switchyard's {kind} selects the etcd pods"
        );
    }
    let sts_selector = string_map(&f.statefulset()["spec"]["selector"]["matchLabels"]);
    assert!(is_subset(&sts_selector, &etcd));
    assert!(!is_subset(&sts_selector, &switchyard));
    for svc in f.all("Service") {
        let selector = string_map(&svc["spec"]["selector"]);
        let name = svc["metadata"]["name"].as_str().unwrap();
        if name.starts_with(f.sts_name()) {
            assert!(is_subset(&selector, &etcd), "Service {name}");
            assert!(!is_subset(&selector, &switchyard), "Service {name}");
        }
    }
    // The NetworkPolicy must let switchyard's pods reach the client port.
    let client_port = host_port(&f.flag("listen-client-urls")).1;
    for policy in f.all("NetworkPolicy") {
        let applies = is_subset(
            &string_map(&policy["spec"]["podSelector"]["matchLabels"]),
            &etcd,
        );
        if !applies {
            continue;
        }
        let admitted = policy["spec"]["ingress"]
            .as_sequence()
            .expect("ingress rules")
            .iter()
            .any(|rule| {
                let port_ok = rule["ports"]
                    .as_sequence()
                    .is_none_or(|ps| ps.iter().any(|p| f.etcd_port(&p["port"]) == client_port));
                let from_ok = rule["from"].as_sequence().is_none_or(|from| {
                    from.iter().any(|peer| {
                        peer["namespaceSelector"].is_null()
                            && is_subset(
                                &string_map(&peer["podSelector"]["matchLabels"]),
                                &switchyard,
                            )
                    })
                });
                port_ok && from_ok
            });
        assert!(admitted, "a NetworkPolicy shuts switchyard out of etcd");
    }
}
