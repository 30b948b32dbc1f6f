"""An Envoy bootstrap shaped like what Istio sends a proxy, built from the
manifests under istio/, with their EnvoyFilter patches applied the way istiod
applies them. There is no istiod and no Kubernetes here, so this is a model of
Istio's output, limited to what the LLM routes depend on, and each piece names
the Istio code it follows:

- names: listener `0.0.0.0_<port>`, HCM stat_prefix `outbound_0.0.0.0_<port>`,
  route configuration (gateway `https.<port>.<server port name>.<gateway>.<ns>`,
  sidecar `<port>`), virtual host `<host>:<port>`, route name = VirtualService
  `http[].name`, cluster `outbound|<port>|<subset>|<host>`
  (pilot/pkg/networking/core/route, util.BuildSubsetKey);
- route retry policy from `retries` exactly as pilot/pkg/networking/core/route/
  retry/retry.go ConvertPolicy (its default when unset: 2 retries);
- virtual hosts with include_request_attempt_count (Istio sets it on all);
- stats_config as tools/packaging/common/envoy_bootstrap.json: Istio's fixed
  tags, one `(<tag>=\\.=(.*?);\\.;)` tag per extraStatTags entry, and the stats
  inclusion list (prefixes from pkg/bootstrap/config.go);
- the access log from the mesh's envoyFileAccessLog provider (labels become a
  JSON format);
- EnvoyFilter patches: workloadSelector and namespace scoping, match context,
  listener port, filter and subFilter names, vhost and route names; operations
  ADD (EXTENSION_CONFIG), INSERT_BEFORE and MERGE (HTTP_FILTER), MERGE
  (VIRTUAL_HOST, HTTP_ROUTE) with protobuf merge semantics. Anything else is an
  error, so a new kind of patch cannot go untested silently.

Differences on purpose: the ECDS resource that config_discovery names is put
inline (there is no ECDS server), clusters are STATIC plain-HTTP endpoints on
loopback (the emulator) instead of DNS with TLS origination, and the listener
is plain HTTP (no Istio mTLS).
"""

from __future__ import annotations

import copy
import http
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import istio_schema

ROOT_NAMESPACE = "istio-system"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
WASM_FILE_IN_POD = "/var/local/lib/wasm/llm_capacity.wasm"


@dataclass
class Proxy:
    """The workload the configuration is built for."""

    kind: str  # "gateway" or "sidecar"
    namespace: str
    labels: dict[str, str]
    listener_port: int  # the port Istio's listener is named after
    service_port: int  # the port the VirtualService routes match on
    gateway: str | None = None  # Gateway resource name (gateway only)
    gateway_server_port_name: str | None = None
    manifests: list[Path] = field(default_factory=list)

    @property
    def context(self) -> str:
        return "GATEWAY" if self.kind == "gateway" else "SIDECAR_OUTBOUND"


def load(paths: list[Path]) -> list[dict]:
    docs = []
    for p in paths:
        docs.extend(d for d in yaml.safe_load_all(p.read_text()) if d)
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


# --- VirtualService -> routes -------------------------------------------------

_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
}


def _parse_retry_on(retry_on: str) -> tuple[str, list[int]]:
    codes, parts = [], []
    for part in (p.strip() for p in retry_on.split(",")):
        if not part:
            continue
        # Go: strconv.Atoi(part) and http.StatusText(i) != ""
        if part.lstrip("-").isdigit() and _go_status_text(int(part)):
            codes.append(int(part))
        else:
            parts.append(part)
    return ",".join(parts), codes


def _go_status_text(code: int) -> bool:
    try:
        http.HTTPStatus(code)
    except ValueError:
        return False
    return True


def convert_retry_policy(retries: dict | None) -> dict | None:
    """retry.go ConvertPolicy (no consistent hash)."""
    out = {
        "num_retries": 2,
        "retry_on": _DEFAULT_RETRY_ON,
        "retriable_status_codes": [503],
        "retry_host_predicate": [copy.deepcopy(_PREVIOUS_HOSTS)],
        "host_selection_retry_max_attempts": 5,
    }
    if retries is None:
        return out
    if retries.get("attempts", 0) <= 0:
        return None
    out["num_retries"] = retries["attempts"]
    if retries.get("retryOn"):
        out["retry_on"], out["retriable_status_codes"] = _parse_retry_on(retries["retryOn"])
        if out["retriable_status_codes"] and "retriable-status-codes" not in out["retry_on"]:
            out["retry_on"] += ",retriable-status-codes"
        if not out["retriable_status_codes"]:
            del out["retriable_status_codes"]
    if "perTryTimeout" in retries:
        out["per_try_timeout"] = retries["perTryTimeout"]
    return out


def cluster_name(host: str, port: int, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


def _route_match(m: dict) -> dict:
    uri = m.get("uri") or {"prefix": "/"}
    if "prefix" in uri:
        out = {"prefix": uri["prefix"]}
    elif "exact" in uri:
        out = {"path": uri["exact"]}
    elif "regex" in uri:
        out = {"safe_regex": {"regex": uri["regex"]}}
    else:
        raise ValueError(f"unsupported uri match {uri}")
    out["case_sensitive"] = True
    return out


def _applies(http_route: dict, vs: dict, proxy: Proxy) -> list[dict]:
    """The matches of an http route that apply to this proxy (Istio splits a
    route with several matches into one Envoy route per match)."""
    vs_gateways = vs["spec"].get("gateways") or ["mesh"]
    want = proxy.gateway if proxy.kind == "gateway" else "mesh"
    out = []
    for m in http_route.get("match") or [{}]:
        gws = m.get("gateways") or vs_gateways
        gws = [g.split("/")[-1] for g in gws]
        if want in gws and m.get("port", proxy.service_port) == proxy.service_port:
            out.append(m)
    return out


def virtual_hosts(docs: list[dict], proxy: Proxy) -> list[dict]:
    vhosts = []
    for vs in of_kind(docs, "VirtualService"):
        ns = vs["metadata"]["namespace"]
        export = vs["spec"].get("exportTo") or ["*"]
        if "*" not in export and not ("." in export and ns == proxy.namespace) and proxy.namespace not in export:
            continue
        routes = []
        for h in vs["spec"]["http"]:
            for m in _applies(h, vs, proxy):
                dests = h["route"]
                if len(dests) != 1:
                    raise ValueError("one destination per route is modelled")
                d = dests[0]["destination"]
                name = h["name"] + ("." + m["name"] if m.get("name") else "")
                action: dict[str, Any] = {
                    "cluster": cluster_name(d["host"], d["port"]["number"], d.get("subset", "")),
                    "timeout": h.get("timeout", "0s"),
                }
                rp = convert_retry_policy(h.get("retries"))
                if rp is not None:
                    action["retry_policy"] = rp
                routes.append({
                    "name": name,
                    "match": _route_match(m),
                    "route": action,
                    "metadata": {"filter_metadata": {"istio": {
                        "config": f"/apis/networking.istio.io/v1/namespaces/{ns}/virtual-service/{vs['metadata']['name']}"}}},
                    "decorator": {"operation": f"{d['host']}:{d['port']['number']}/*"},
                })
        if routes:
            for host in vs["spec"]["hosts"]:
                vhosts.append({
                    "name": f"{host}:{proxy.service_port}",
                    "domains": [host, f"{host}:*"],
                    "routes": routes,
                    "include_request_attempt_count": True,
                })
    return vhosts


def clusters(docs: list[dict], upstream_port: dict[str, int]) -> list[dict]:
    """One cluster per ServiceEntry host and port 443, plus the subsets of its
    DestinationRules (subsets inherit the port's traffic policy), each a STATIC
    loopback endpoint (the emulator)."""
    out = []
    subsets: dict[str, list[str]] = {}
    max_retries: dict[str, int] = {}
    for dr in of_kind(docs, "DestinationRule"):
        subsets.setdefault(dr["spec"]["host"], []).extend(s["name"] for s in dr["spec"].get("subsets", []))
        for pls in (dr["spec"].get("trafficPolicy") or {}).get("portLevelSettings", []):
            mr = pls.get("connectionPool", {}).get("http", {}).get("maxRetries")
            if pls["port"]["number"] == 443 and mr is not None:
                max_retries[dr["spec"]["host"]] = mr
    for se in of_kind(docs, "ServiceEntry"):
        for host in se["spec"]["hosts"]:
            for port in se["spec"]["ports"]:
                if port["number"] != 443:
                    continue
                for subset in [""] + subsets.get(host, []):
                    name = cluster_name(host, 443, subset)
                    out.append({
                        "name": name,
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        # DestinationRule connectionPool.http.maxRetries (Istio: unlimited when unset).
                        "circuit_breakers": {"thresholds": [{"max_retries": max_retries.get(host, 4294967295)}]},
                        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port[name]}}}}]}]},
                    })
    return out


# --- mesh config -> bootstrap pieces -----------------------------------------

# tools/packaging/common/envoy_bootstrap.json
_ISTIO_FIXED_TAGS_BEFORE = [
    {"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"},
    {"tag_name": "tcp_prefix", "regex": "^tcp\\.((.*?)\\.)\\w+?$"},
    {"tag_name": "response_code", "regex": "_rq(_(\\d{3}))$"},
    {"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"},
    {"tag_name": "http_conn_manager_listener_prefix",
     "regex": "^listener(?=\\.).*?\\.http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
    {"tag_name": "http_conn_manager_prefix", "regex": "^http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
    {"tag_name": "listener_address", "regex": "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
    {"tag_name": "mongo_prefix", "regex": "^mongo\\.(.+?)\\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"},
]
_ISTIO_FIXED_TAGS_AFTER = [
    {"tag_name": "cache", "regex": "(cache\\.(.+?)\\.)"},
    {"tag_name": "component", "regex": "(component\\.(.+?)\\.)"},
    {"tag_name": "tag", "regex": "(tag\\.(.+?);\\.)"},
    {"tag_name": "wasm_filter", "regex": "(wasm_filter\\.(.+?)\\.)"},
    {"tag_name": "authz_enforce_result", "regex": "rbac(\\.(allowed|denied))"},
    {"tag_name": "authz_dry_run_action", "regex": "(\\.istio_dry_run_(allow|deny)_)"},
    {"tag_name": "authz_dry_run_result", "regex": "(\\.shadow_(allowed|denied))"},
]
# pkg/bootstrap/config.go requiredEnvoyStatsMatcherInclusionPrefixes, plus the
# template's own entries.
_ISTIO_STATS_INCLUSION_PREFIXES = ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc",
                                   "wasm", "component", "istio"]


def stats_config(extra_stat_tags: list[str]) -> dict:
    tags = list(_ISTIO_FIXED_TAGS_BEFORE)
    tags += [{"regex": f"({t}=\\.=(.*?);\\.;)", "tag_name": t} for t in extra_stat_tags]
    tags += _ISTIO_FIXED_TAGS_AFTER
    return {
        "use_all_default_tags": False,
        "stats_tags": tags,
        "stats_matcher": {"inclusion_list": {"patterns": [{"prefix": p} for p in _ISTIO_STATS_INCLUSION_PREFIXES]}},
    }


def access_log(provider: dict) -> dict:
    """An envoyFileAccessLog extension provider as Envoy's file access log."""
    f = provider["envoyFileAccessLog"]
    fmt = f.get("logFormat", {})
    log_format = {"json_format": fmt["labels"]} if "labels" in fmt else {"text_format_source": {"inline_string": fmt["text"]}}
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": f["path"],
            "log_format": log_format,
        },
    }


# --- EnvoyFilter patches -------------------------------------------------------

# RouteAction's cluster_specifier oneof: setting one member clears the others.
_ONEOFS = [{"cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin", "inline_cluster_specifier_plugin"}]


def proto_merge(dst: Any, src: Any) -> Any:
    """protobuf Merge on the YAML form: messages merge field by field, repeated
    fields append, scalars (and well-known types written as scalars, like
    durations) replace, an Any of another type replaces, a oneof member clears
    its siblings."""
    if isinstance(dst, dict) and isinstance(src, dict):
        if "@type" in src and dst.get("@type") not in (None, src["@type"]):
            return copy.deepcopy(src)
        out = dict(dst)
        for group in _ONEOFS:
            set_here = group & src.keys()
            if set_here:
                for k in group - set_here:
                    out.pop(k, None)
        for k, v in src.items():
            out[k] = proto_merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    if isinstance(dst, list) and isinstance(src, list):
        return dst + copy.deepcopy(src)
    return copy.deepcopy(src)


def selected_envoy_filters(docs: list[dict], proxy: Proxy) -> list[dict]:
    out = []
    for ef in of_kind(docs, "EnvoyFilter"):
        ns = ef["metadata"]["namespace"]
        if ns not in (ROOT_NAMESPACE, proxy.namespace):
            continue
        sel = (ef["spec"].get("workloadSelector") or {}).get("labels", {})
        if all(proxy.labels.get(k) == v for k, v in sel.items()):
            out.append(ef)
    return out


def _context_ok(match: dict, proxy: Proxy) -> bool:
    return match.get("context", "ANY") in ("ANY", proxy.context)


def _http_filter_match(match: dict, proxy: Proxy, filter_name: str) -> bool:
    lst = match.get("listener", {})
    if "portNumber" in lst and lst["portNumber"] != proxy.listener_port:
        return False
    f = lst.get("filterChain", {}).get("filter", {})
    if f.get("name", HCM) != HCM:
        return False
    sub = f.get("subFilter", {}).get("name")
    return sub is None or sub == filter_name


def _rc_match(match: dict, proxy: Proxy, vhost: dict, route: dict | None) -> bool:
    rc = match.get("routeConfiguration", {})
    if "portNumber" in rc and rc["portNumber"] != proxy.service_port:
        return False
    vm = rc.get("vhost", {})
    if vm.get("name") not in (None, vhost["name"]):
        return False
    if route is not None:
        rm = vm.get("route", {})
        if rm.get("name") not in (None, route["name"]):
            return False
    return True


@dataclass
class Applied:
    """Which patches were applied where (the test asserts on it)."""

    log: list[str] = field(default_factory=list)


def apply_envoy_filters(hcm: dict, efs: list[dict], proxy: Proxy, applied: Applied) -> None:
    ecds: dict[str, dict] = {}
    patches = [(ef["metadata"]["name"], p) for ef in efs for p in ef["spec"]["configPatches"]]
    for name, p in patches:
        if p["applyTo"] == "EXTENSION_CONFIG":
            if p["patch"]["operation"] != "ADD":
                raise ValueError(f"{name}: EXTENSION_CONFIG supports ADD only")
            v = p["patch"]["value"]
            ecds[v["name"]] = v["typed_config"]
            applied.log.append(f"{name}: EXTENSION_CONFIG {v['name']}")
    for name, p in patches:
        kind, op, match = p["applyTo"], p["patch"]["operation"], p.get("match", {})
        if kind == "EXTENSION_CONFIG":
            continue
        if not _context_ok(match, proxy):
            continue
        value = p["patch"]["value"]
        if kind == "HTTP_FILTER":
            filters = hcm["http_filters"]
            idx = [i for i, f in enumerate(filters) if _http_filter_match(match, proxy, f["name"])]
            if not idx:
                continue
            i = idx[0]
            if op == "INSERT_BEFORE":
                f = copy.deepcopy(value)
                if "config_discovery" in f:
                    # What Envoy gets over ECDS, put inline.
                    if f["config_discovery"]["type_urls"] != [WASM_TYPE] or f["name"] not in ecds:
                        raise ValueError(f"{name}: config_discovery names no EXTENSION_CONFIG of type Wasm")
                    f = {"name": f["name"], "typed_config": copy.deepcopy(ecds[f["name"]])}
                filters.insert(i, f)
                applied.log.append(f"{name}: HTTP_FILTER INSERT_BEFORE {filters[i + 1]['name']}")
            elif op == "MERGE":
                filters[i] = proto_merge(filters[i], value)
                applied.log.append(f"{name}: HTTP_FILTER MERGE {filters[i]['name']}")
            else:
                raise ValueError(f"{name}: HTTP_FILTER {op} is not modelled")
        elif kind in ("VIRTUAL_HOST", "HTTP_ROUTE"):
            if op != "MERGE":
                raise ValueError(f"{name}: {kind} {op} is not modelled")
            for vh_i, vh in enumerate(hcm["route_config"]["virtual_hosts"]):
                if kind == "VIRTUAL_HOST":
                    if _rc_match(match, proxy, vh, None):
                        hcm["route_config"]["virtual_hosts"][vh_i] = proto_merge(vh, value)
                        applied.log.append(f"{name}: VIRTUAL_HOST MERGE {vh['name']}")
                    continue
                for r_i, r in enumerate(vh["routes"]):
                    if _rc_match(match, proxy, vh, r):
                        vh["routes"][r_i] = proto_merge(r, value)
                        applied.log.append(f"{name}: HTTP_ROUTE MERGE {vh['name']}/{r['name']}")
        else:
            raise ValueError(f"{name}: applyTo {kind} is not modelled")


# --- the bootstrap ---------------------------------------------------------------

def mesh_config(paths: list[Path]) -> dict:
    ops = of_kind(load(paths), "IstioOperator")
    if len(ops) != 1:
        raise ValueError("expected one IstioOperator with the mesh config")
    return ops[0]["spec"]["meshConfig"]


def access_log_provider_names(docs: list[dict], proxy: Proxy) -> list[str]:
    names = []
    for t in of_kind(docs, "Telemetry"):
        ns = t["metadata"]["namespace"]
        sel = (t["spec"].get("selector") or {}).get("matchLabels", {})
        if ns in (ROOT_NAMESPACE, proxy.namespace) and all(proxy.labels.get(k) == v for k, v in sel.items()):
            for al in t["spec"].get("accessLogging", []):
                names += [p["name"] for p in al.get("providers", [])]
    return names


def bootstrap(proxy: Proxy, upstream_port: dict[str, int], wasm: Path, mesh_paths: list[Path]) -> tuple[dict, Applied]:
    docs = load(proxy.manifests)
    for d in docs:
        istio_schema.validate(d)
    mesh = mesh_config(mesh_paths)
    providers = {p["name"]: p for p in mesh.get("extensionProviders", [])}
    logs = [access_log(providers[n]) for n in access_log_provider_names(docs, proxy)]
    if proxy.kind == "gateway":
        rc_name = f"https.{proxy.service_port}.{proxy.gateway_server_port_name}.{proxy.gateway}.{ROOT_NAMESPACE}"
    else:
        rc_name = str(proxy.service_port)
    listener = f"0.0.0.0_{proxy.listener_port}"
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"outbound_{listener}",
        "stream_idle_timeout": "300s",
        "access_log": logs,
        "route_config": {"name": rc_name, "validate_clusters": False, "virtual_hosts": virtual_hosts(docs, proxy)},
        # Istio's HTTP filters that upstream Envoy has, then the router.
        "http_filters": [
            {"name": "envoy.filters.http.fault",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.cors",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": ROUTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    applied = Applied()
    apply_envoy_filters(hcm, selected_envoy_filters(docs, proxy), proxy, applied)
    text = json.dumps(hcm)
    if WASM_FILE_IN_POD in text:
        text = text.replace(json.dumps(WASM_FILE_IN_POD)[1:-1], str(wasm))
    hcm = json.loads(text)
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": stats_config(mesh["defaultConfig"].get("extraStatTags", [])),
        "static_resources": {
            "listeners": [{
                "name": listener,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
            }],
            "clusters": clusters(docs, upstream_port),
        },
    }
    return cfg, applied


def hcm_of(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
