#!/usr/bin/env python3
"""Helper of scripts/k8s-validate.sh: splits a rendered overlay for the two
schema validators, checks what schemas cannot say (security settings,
probes, the wiring between the config and the Kafka resources), and makes
deliberately broken copies that the validators must refuse.

    k8s_validate.py split OVERLAY RENDERED OUTDIR
        OUTDIR/k8s.yaml      every object that is not a Strimzi resource
        OUTDIR/strimzi.json  the Strimzi resources, a JSON array
        OUTDIR/otwatch.toml  the config the ConfigMap carries
      and exits 1, naming each problem, if a deployment rule is broken.

    k8s_validate.py break RENDERED OUTDIR
        OUTDIR/broken-*.yaml|json, one wrong field or value each; the name
        says which validator must refuse it.

    k8s_validate.py rules-must-fail RENDERED
        exits 0 only if the rules refuse copies that break each rule.
"""

import copy
import json
import sys
import tomllib
from pathlib import Path

import yaml

STRIMZI_GROUP = "kafka.strimzi.io/"
STRIMZI_API = "kafka.strimzi.io/v1"
ROLES = {"collector", "detector", "history"}
CONFIG_PATH = "/etc/otwatch/otwatch.toml"
METRICS_PORT = 9464
INGEST_PORT = 4317
COLLECTOR_TLS_SECRET = "otwatch-collector-tls"
REPO = Path(__file__).resolve().parent.parent


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def dump(docs, path):
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def is_strimzi(doc):
    return doc.get("apiVersion", "").startswith(STRIMZI_GROUP)


def name(doc):
    return f"{doc['kind']}/{doc['metadata']['name']}"


def config_text(docs):
    maps = [
        d for d in docs
        if d["kind"] == "ConfigMap" and "otwatch.toml" in d.get("data", {})
    ]
    if len(maps) != 1:
        return None, None
    return maps[0], maps[0]["data"]["otwatch.toml"]


def rules(overlay, docs, check_source=True):
    """Every deployment rule the schemas cannot express; returns problems."""
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def need(cond, what):
        if not cond:
            problems.append(what)

    need(not by_kind.get("Ingress"),
         "an Ingress would terminate TLS in front of the collector: agents need TLS passthrough")

    # The config.
    cm, text = config_text(docs)
    need(text is not None, "exactly one ConfigMap must carry otwatch.toml")
    config = {}
    if text is not None:
        config = tomllib.loads(text)
        own = REPO / "k8s" / "overlays" / overlay / "otwatch.toml"
        source = own if own.exists() else REPO / "k8s" / "base" / "otwatch.toml"
        need(not check_source or text == source.read_text(),
             f"the ConfigMap's otwatch.toml differs from {source.relative_to(REPO)}")
        need(config.get("listen", "").endswith(f":{INGEST_PORT}"),
             f"otwatch.toml: listen must be on port {INGEST_PORT}")
        need(config.get("metrics_listen", "").endswith(f":{METRICS_PORT}"),
             f"otwatch.toml: metrics_listen must be on port {METRICS_PORT} (the probes use it)")
        tls = config.get("collector", {}).get("tls", {})
        need(all(k in tls for k in ("cert", "key", "client_ca")),
             "otwatch.toml: [collector.tls] needs cert, key and client_ca")
        need(config.get("log", {}).get("kind") == "kafka", "otwatch.toml: [log] kind must be \"kafka\"")

    # Workloads.
    deployments = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    roles_seen = {}
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        where = name(d)
        need(spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken must be false")
        psc = spec.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot must be true")
        need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
             f"{where}: pod seccompProfile must be RuntimeDefault")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = {m["name"] for c in spec.get("initContainers", []) + spec["containers"]
                   for m in c.get("volumeMounts", [])}
        for v in volumes:
            need(v in mounted, f"{where}: volume {v} is mounted by no container")
        is_collector = any(c.get("args", [None])[0] == "collector" for c in spec["containers"])
        for v in volumes.values():
            secret = v.get("secret", {}).get("secretName", "")
            need(is_collector or secret != COLLECTOR_TLS_SECRET,
                 f"{where}: only collectors hold the collector's key (Secret {COLLECTOR_TLS_SECRET})")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            need(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
            need(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
            need("ALL" in sc.get("capabilities", {}).get("drop", []), f"{cw}: capabilities must drop ALL")
            need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cw}: must run as non-root")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    need(r in res.get(kind, {}), f"{cw}: resources.{kind}.{r} missing")
            args = c.get("args", [])
            role = args[0] if args else None
            need(role in ROLES, f"{cw}: args must start with a role ({', '.join(sorted(ROLES))})")
            need(args[1:3] == ["--config", CONFIG_PATH], f"{cw}: args must pass --config {CONFIG_PATH}")
            roles_seen[role] = d
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                need(get.get("path") == path, f"{cw}: {probe} must GET {path}")
                port = get.get("port")
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                need(ports.get(port, port) == METRICS_PORT, f"{cw}: {probe} must use the metrics port {METRICS_PORT}")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            m = mounts.get(CONFIG_PATH)
            need(m is not None and cm is not None
                 and volumes.get(m["name"], {}).get("configMap", {}).get("name") == cm["metadata"]["name"],
                 f"{cw}: {CONFIG_PATH} must come from the otwatch.toml ConfigMap")
            for path in (tls.get(k) for k in ("cert", "key", "client_ca")) if role == "collector" and config else []:
                mount = next((m for p, m in mounts.items() if path and path.startswith(p.rstrip("/") + "/")), None)
                need(mount is not None and "secret" in volumes.get(mount["name"], {}),
                     f"{cw}: {path} must come from a Secret")
    # The image the Dockerfile makes runs as the user the pods expect.
    docker = (REPO / "Dockerfile").read_text().splitlines()
    user = [l.split()[1] for l in docker if l.startswith("USER ")]
    exposed = {p for l in docker if l.startswith("EXPOSE ") for p in l.split()[1:]}
    for d in deployments:
        psc = d["spec"]["template"]["spec"].get("securityContext", {})
        need(user and user[-1] == f"{psc.get('runAsUser')}:{psc.get('runAsGroup')}",
             f"{name(d)}: runAsUser:runAsGroup must be the Dockerfile's USER ({user[-1] if user else 'none'})")
    need({str(INGEST_PORT), str(METRICS_PORT)} <= exposed, "the Dockerfile must EXPOSE the ingest and metrics ports")
    need(set(roles_seen) == ROLES, f"roles deployed: {sorted(r for r in roles_seen if r)}, expected {sorted(ROLES)}")

    # The collector's Service: plain TCP on the ingest port.
    collector_svcs = [
        s for s in by_kind.get("Service", [])
        if any(p.get("port") == INGEST_PORT for p in s["spec"].get("ports", []))
    ]
    need(len(collector_svcs) == 1, f"exactly one Service must expose port {INGEST_PORT}")
    for s in collector_svcs:
        need(s["spec"].get("type") in ("LoadBalancer", "NodePort"),
             f"{name(s)}: agents reach the collector through a LoadBalancer (or, in dev, NodePort) Service")
        need(all(p.get("protocol", "TCP") == "TCP" for p in s["spec"]["ports"]), f"{name(s)}: TCP only")
        need(s["spec"].get("selector", {}).get("app.kubernetes.io/component") == "collector",
             f"{name(s)}: must select the collectors")

    # NetworkPolicies.
    policies = by_kind.get("NetworkPolicy", [])
    need(any(p["spec"].get("podSelector") == {} and p["spec"].get("policyTypes") == ["Ingress"]
             and not p["spec"].get("ingress") for p in policies),
         "a default-deny ingress NetworkPolicy for the whole namespace is missing")
    for p in policies:
        sel = p["spec"].get("podSelector", {}).get("matchLabels", {})
        for rule in p["spec"].get("ingress", []):
            ports = {x.get("port") for x in rule.get("ports", [])}
            if INGEST_PORT in ports:
                need(sel.get("app.kubernetes.io/component") == "collector",
                     f"{name(p)}: only the collectors take port {INGEST_PORT}")
                need(all("ipBlock" in f for f in rule.get("from", [])) and rule.get("from"),
                     f"{name(p)}: port {INGEST_PORT} is for agents (ipBlock sources) only")
            need(rule.get("ports"), f"{name(p)}: every ingress rule must name its ports")

    # Kafka: only otwatch reaches it, and the config points at it.
    kafkas = by_kind.get("Kafka", [])
    need(len(kafkas) == 1, "exactly one Kafka resource")
    for strimzi in (d for d in docs if is_strimzi(d)):
        need(strimzi["apiVersion"] == STRIMZI_API, f"{name(strimzi)}: apiVersion must be {STRIMZI_API}")
    if kafkas:
        kafka = kafkas[0]
        cluster = kafka["metadata"]["name"]
        listeners = kafka["spec"]["kafka"]["listeners"]
        for l in listeners:
            peers = l.get("networkPolicyPeers", [])
            need(peers and all(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "otwatch"
                               for p in peers),
                 f"{name(kafka)} listener {l['name']}: networkPolicyPeers must admit otwatch's pods only")
        log = config.get("log", {})
        tls_ports = {l["port"] for l in listeners if l.get("tls")}
        for b in log.get("brokers", []):
            host, _, port = b.rpartition(":")
            need(host == f"{cluster}-kafka-bootstrap" and int(port) in tls_ports,
                 f"otwatch.toml: broker {b} is not the TLS bootstrap of Kafka {cluster}")
        need(log.get("brokers"), "otwatch.toml: [log] brokers missing")
        security = log.get("security", {})
        need(security.get("protocol") in ("ssl", "sasl_ssl"),
             "otwatch.toml: [log.security] protocol must be ssl or sasl_ssl (the listener is TLS)")
        ca = security.get("ca_file", "")
        for d in deployments:
            spec = d["spec"]["template"]["spec"]
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec["containers"]:
                mount = next((m for m in c.get("volumeMounts", [])
                              if ca.startswith(m["mountPath"].rstrip("/") + "/")), None)
                need(mount is not None and "secret" in vols.get(mount["name"], {}),
                     f"{name(d)} container {c['name']}: [log.security] ca_file {ca} must come from a Secret")
        topics = {t["metadata"]["name"]: t for t in by_kind.get("KafkaTopic", [])}
        keys = ("events_topic", "alerts_topic", "control_topic", "producers_topic")
        for key in keys:
            need(log.get(key) in topics, f"otwatch.toml: [log] {key} = {log.get(key)!r} has no KafkaTopic")
        topic = {key: topics.get(log.get(key), {}).get("spec", {}) for key in keys}
        need(topic["producers_topic"].get("config", {}).get("cleanup.policy") == "compact",
             "the producers topic (agents' high-water marks) must be compacted")
        need(topic["control_topic"].get("partitions") == 1,
             "the control topic (SOC decisions, a hash chain) has one partition")
        for key in ("events_topic", "alerts_topic", "producers_topic"):
            need(topic[key].get("partitions") == log.get("partitions"),
                 f"otwatch.toml: [log] partitions = {log.get('partitions')} but {log.get(key)} has "
                 f"{topic[key].get('partitions')}: otwatch would create it differently from the KafkaTopic")
        for key in keys:
            need(topic[key].get("replicas") == log.get("replication_factor"),
                 f"otwatch.toml: [log] replication_factor = {log.get('replication_factor')} but "
                 f"{log.get(key)} has {topic[key].get('replicas')} replicas")
        retention_ms = seconds(log.get("retention", "7d")) * 1000
        need(topic["events_topic"].get("config", {}).get("retention.ms") == retention_ms,
             f"otwatch.toml: [log] retention ({log.get('retention')}) differs from the events topic's retention.ms")
        pools = by_kind.get("KafkaNodePool", [])
        for p in pools + list(topics.values()):
            need(p["metadata"].get("labels", {}).get("strimzi.io/cluster") == cluster,
                 f"{name(p)}: label strimzi.io/cluster must be {cluster}")
        brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
        replicas = [t["spec"].get("replicas", 1) for t in topics.values()]
        need(all(r <= brokers for r in replicas), "a topic has more replicas than there are brokers")
        isr = kafka["spec"]["kafka"].get("config", {}).get("min.insync.replicas", 1)
        for t in topics.values():
            tisr = t["spec"].get("config", {}).get("min.insync.replicas", isr)
            need(tisr <= t["spec"].get("replicas", 1),
                 f"{name(t)}: min.insync.replicas above its replicas would refuse every write")
        if overlay == "dev":
            need(brokers == 1, "dev runs one broker")
        if overlay == "prod":
            need(brokers >= 3, "prod runs at least three brokers")
            need(all(r >= 3 for r in replicas), "prod topics keep three replicas")
            need(isr >= 2, "prod acks a write once two brokers hold it (min.insync.replicas >= 2)")

    if overlay == "prod":
        hpas = by_kind.get("HorizontalPodAutoscaler", [])
        need(any(h["spec"]["scaleTargetRef"]["name"] == roles_seen.get("collector", {}).get("metadata", {}).get("name")
                 for h in hpas), "prod: the collector needs a HorizontalPodAutoscaler")
        pdbs = by_kind.get("PodDisruptionBudget", [])
        for role, d in roles_seen.items():
            labels = d["spec"]["selector"]["matchLabels"]
            need(any(p["spec"]["selector"].get("matchLabels") == labels for p in pdbs),
                 f"prod: {name(d)} needs a PodDisruptionBudget")
            need(d["spec"].get("replicas", 1) >= 2, f"prod: {name(d)} needs at least two replicas")
            need("podAntiAffinity" in d["spec"]["template"]["spec"].get("affinity", {}),
                 f"prod: {name(d)} needs pod anti-affinity")
    return problems


def seconds(text):
    """A duration of otwatch.toml ("14d", "12h", "30m", "90s") in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return int(text[:-1]) * units[text[-1]]


def split(overlay, rendered, outdir):
    docs = load(rendered)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    dump([d for d in docs if not is_strimzi(d)], out / "k8s.yaml")
    (out / "strimzi.json").write_text(json.dumps([d for d in docs if is_strimzi(d)], indent=1))
    _, text = config_text(docs)
    if text is not None:
        (out / "otwatch.toml").write_text(text)
    problems = rules(overlay, docs)
    for p in problems:
        print(f"RULE {overlay}: {p}")
    kinds = sorted({d["kind"] for d in docs})
    print(f"{overlay}: {len(docs)} objects ({', '.join(kinds)}), {len(problems)} rule(s) broken")
    return 1 if problems else 0


def first(docs, kind, pred=lambda d: True):
    return next(d for d in docs if d["kind"] == kind and pred(d))


def break_copies(rendered, outdir):
    docs = load(rendered)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    core = [d for d in docs if not is_strimzi(d)]
    strimzi = [d for d in docs if is_strimzi(d)]

    def k8s(label, mutate):
        copies = copy.deepcopy(core)
        mutate(copies)
        dump(copies, out / f"broken-k8s-{label}.yaml")

    def crd(label, mutate):
        copies = copy.deepcopy(strimzi)
        mutate(copies)
        (out / f"broken-strimzi-{label}.json").write_text(json.dumps(copies))

    def container(docs):
        return first(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]

    # A misspelt field, where strict validation alone catches it.
    k8s("misspelt-field", lambda d: container(d).update(
        securityContxt=container(d).pop("securityContext")))
    # A wrong type.
    k8s("wrong-type", lambda d: first(d, "Deployment")["spec"].update(replicas="two"))
    # A field of another API version.
    k8s("unknown-field", lambda d: first(d, "Service")["spec"].update(ingressClassName="nginx"))
    crd("misspelt-field", lambda d: first(d, "KafkaTopic")["spec"].update(
        partitons=first(d, "KafkaTopic")["spec"].pop("partitions")))
    crd("nested-unknown-field", lambda d: first(d, "Kafka")["spec"]["kafka"]["listeners"][0].update(
        networkPolicyPeer=[]))
    crd("wrong-type", lambda d: first(d, "KafkaNodePool")["spec"].update(replicas="three"))
    crd("wrong-enum", lambda d: first(d, "Kafka")["spec"]["kafka"]["listeners"][0].update(type="internal-tls"))
    crd("old-api", lambda d: first(d, "KafkaTopic").update(apiVersion="kafka.strimzi.io/v1beta2"))
    return 0


def rules_must_fail(overlay, rendered):
    """Each rule refuses a copy that breaks it: the rules are not vacuous."""
    docs = load(rendered)

    def container(d):
        return first(d, "Deployment")["spec"]["template"]["spec"]["containers"][0]

    def kafka(d):
        return first(d, "Kafka")["spec"]["kafka"]

    def give_detector_the_key(d):
        spec = first(d, "Deployment", lambda x: x["metadata"]["name"].endswith("detector"))["spec"]["template"]["spec"]
        spec["volumes"].append({"name": "key", "secret": {"secretName": COLLECTOR_TLS_SECRET}})
        spec["containers"][0]["volumeMounts"].append({"name": "key", "mountPath": "/etc/otwatch/tls"})

    def set_config(d, old, new):
        cm, text = config_text(d)
        assert old in text, old
        cm["data"]["otwatch.toml"] = text.replace(old, new)

    breaks = {
        "writable root file system": lambda d: container(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "capabilities kept": lambda d: container(d)["securityContext"].update(capabilities={}),
        "no memory limit": lambda d: container(d)["resources"]["limits"].pop("memory"),
        "liveness not on /healthz": lambda d: container(d)["livenessProbe"]["httpGet"].update(path="/"),
        "readiness not on /readyz": lambda d: container(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "an Ingress": lambda d: d.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                          "metadata": {"name": "collector"}, "spec": {}}),
        "Kafka open to every pod": lambda d: kafka(d)["listeners"][0].pop("networkPolicyPeers"),
        "config names a missing topic": lambda d: first(d, "KafkaTopic").update(
            metadata={**first(d, "KafkaTopic")["metadata"], "name": "renamed"}),
        "no default deny": lambda d: d.remove(first(d, "NetworkPolicy", lambda p: p["spec"]["podSelector"] == {})),
        "ingest open to pods": lambda d: first(d, "NetworkPolicy", lambda p: any(
            INGEST_PORT in {x.get("port") for x in r.get("ports", [])} for r in p["spec"].get("ingress", [])))
        ["spec"]["ingress"][0]["from"].append({"podSelector": {}}),
        "collector key in a detector": lambda d: give_detector_the_key(d),
        "plaintext to Kafka": lambda d: set_config(d, "[log.security]\nprotocol = \"ssl\"", "[log.security]\nprotocol = \"plaintext\""),
        "config and topic partitions differ": lambda d: first(d, "KafkaTopic", lambda t: t["metadata"]["name"].endswith("events"))
        ["spec"].update(partitions=7),
        "producers topic not compacted": lambda d: first(d, "KafkaTopic", lambda t: t["metadata"]["name"].endswith("producers"))
        ["spec"]["config"].update({"cleanup.policy": "delete"}),
        "v1beta2 Strimzi resource": lambda d: first(d, "KafkaTopic").update(apiVersion="kafka.strimzi.io/v1beta2"),
    }
    if overlay == "prod":
        breaks.update({
            "no autoscaler": lambda d: d.remove(first(d, "HorizontalPodAutoscaler")),
            "no disruption budget": lambda d: d.remove(first(d, "PodDisruptionBudget")),
            "no anti-affinity": lambda d: first(d, "Deployment")["spec"]["template"]["spec"].pop("affinity"),
            "one broker": lambda d: [p["spec"].update(replicas=1) for p in d
                                     if p["kind"] == "KafkaNodePool" and "broker" in p["spec"]["roles"]],
        })
    failed = 0
    copies = copy.deepcopy(docs)
    set_config(copies, "[log]", "[log]\n# edited after rendering")
    problems = rules(overlay, copies)
    if problems:
        print(f"ok {overlay}: ConfigMap differs from its source file: refused ({problems[0]})")
    else:
        print(f"NOT REFUSED {overlay}: ConfigMap differs from its source file")
        failed += 1
    for what, mutate in breaks.items():
        copies = copy.deepcopy(docs)
        mutate(copies)
        # The copies' config differs from its source file on purpose: each
        # break must be refused by the rule it breaks, not by that check.
        problems = rules(overlay, copies, check_source=False)
        if problems:
            print(f"ok {overlay}: {what}: refused ({problems[0]})")
        else:
            print(f"NOT REFUSED {overlay}: {what}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "split":
        sys.exit(split(*args))
    if cmd == "break":
        sys.exit(break_copies(*args))
    if cmd == "rules-must-fail":
        sys.exit(rules_must_fail(*args))
    sys.exit(f"unknown command {cmd}")
