#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (Fuzz/Corpus/<target>/), one file per seed.

Run it again after editing; the seeds are committed, and `make fuzz` copies them before a run,
so a run never changes them. Real requests of every route (sync, async and waiting cancels, the
machine-action family, status, the listing with a query, withdrawals), malformed ones, and real
configuration files with environment overrides (the FuzzConfig input format is in its source).
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ACTION = "988cc94e-7a8f-4b28-ab65-54970c5d5018"
MACHINE = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
SHA1 = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9"


def request(method, path, headers=(), body=None, version="HTTP/1.1", eol="\r\n"):
    lines = [f"{method} {path} {version}", "Host: localhost"] + list(headers)
    data = body.encode() if isinstance(body, str) else body
    if data is not None and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(data)}")
    return (eol.join(lines) + eol + eol).encode() + (data or b"")


def chunked(method, path, body, headers=()):
    data = body.encode()
    framed = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (data[:7], data[7:])) + b"0\r\n\r\n"
    return request(method, path, ["Transfer-Encoding: chunked", *headers], framed)


def comment(text="isolated by mistake"):
    return '{"Comment": "%s"}' % text


cancel = f"/api/machineactions/{ACTION}/cancel"
json = "Content-Type: application/json"

REQUESTS = {
    "cancel-sync": request("POST", cancel, [json], comment()),
    "cancel-async": request("POST", cancel, [json, "Prefer: respond-async", "Mdegate-Client: soar-playbook"], comment()),
    "cancel-wait": request("POST", cancel, [json, "Prefer: wait=2"], comment()),
    "cancel-async-and-wait": request("POST", cancel, ["Prefer: wait=0, respond-async"], comment()),
    "cancel-upstream-404": request("POST", cancel.replace("5018", "5010"), [json], comment()),
    "cancel-upstream-500": request("POST", cancel.replace("5018", "5015"), [json], comment()),
    "cancel-no-answer": request("POST", cancel.replace("5018", "501e"), [json], comment()),
    "cancel-uppercase-id": request("POST", cancel.upper().replace("/API/", "/api/"), [json], comment()),
    "cancel-authorization-ignored": request("POST", cancel, [json, "Authorization: Bearer stolen"], comment()),
    "cancel-coalesced": request("POST", cancel, ["Prefer: respond-async"], comment("one"))
    + request("POST", cancel, ["Prefer: respond-async"], comment("two")),
    "get-action": request("GET", f"/api/machineactions/{ACTION}"),
    "list-actions": request("GET", "/api/machineactions?$filter=status+eq+%27Pending%27&$top=10&$skip=0"),
    "isolate": request("POST", f"/api/machines/{MACHINE}/isolate", [json], '{"Comment": "c", "IsolationType": "Selective"}'),
    "unisolate": request("POST", f"/api/machines/{MACHINE}/unisolate", [json], comment()),
    "scan": request("POST", f"/api/machines/{MACHINE}/runAntiVirusScan", [json], '{"Comment": "c", "ScanType": "quick"}'),
    "collect": request("POST", f"/api/machines/{MACHINE}/collectInvestigationPackage", ["Prefer: respond-async"], comment()),
    "restrict": request("POST", f"/api/machines/{MACHINE}/restrictCodeExecution", [json], comment()),
    "unrestrict": request("POST", f"/api/machines/{MACHINE}/unrestrictCodeExecution", [json], comment()),
    "quarantine": request("POST", f"/api/machines/{MACHINE}/StopAndQuarantineFile", [json], '{"Comment": "c", "Sha1": "%s"}' % SHA1),
    "status": request("GET", "/v1/status"),
    "healthz": request("GET", "/healthz"),
    "metrics": request("GET", "/metrics"),
    "request-unknown": request("GET", "/v1/requests/4f1c2b9e-0000-4000-8000-000000000000"),
    "withdraw-unknown": request("DELETE", "/v1/requests/4f1c2b9e-0000-4000-8000-000000000000"),
    "listing-query": request("GET", "/v1/requests?client=soar-playbook&uid=1000&state=queued,done&api=cancel&since=1h&until=2026-12-03T04:00:00Z&limit=10"),
    "listing-cursor": request("GET", f"/v1/requests?machineActionId={ACTION}&cursor=1764734400000000000.7"),
    "listing-bad": request("GET", "/v1/requests?uid=%0Aforged&state=nope"),
    "listing-unreadable": request("GET", "/v1/requests?%zz"),
    "pipelined": request("POST", cancel, ["Prefer: respond-async"], comment())
    + request("GET", "/v1/status") + request("DELETE", "/v1/requests/x") + request("GET", "/healthz", ["Connection: close"]),
    "chunked-cancel": chunked("POST", cancel, comment(), [json]),
    "http10": request("POST", cancel, [json], comment(), version="HTTP/1.0"),
    "connection-close": request("POST", cancel, [json, "Connection: close"], comment()) + request("GET", "/v1/status"),
    "expect-continue": request("POST", cancel, [json, "Expect: 100-continue"], comment()),
    "head-healthz": request("HEAD", "/healthz"),
    "options-cancel": request("OPTIONS", cancel),
    "get-cancel": request("GET", cancel),
    "absolute-uri": request("POST", "http://localhost" + cancel, [json], comment()),
    "lf-only": request("POST", cancel, [json], comment(), eol="\n"),
    "bad-guid": request("POST", "/api/machineactions/not-a-guid/cancel", [json], comment()),
    "bad-machine": request("POST", "/api/machines/xyz/isolate", [json], '{"Comment": "c", "IsolationType": "Full"}'),
    "body-not-json": request("POST", cancel, [json], "Comment=hi"),
    "body-array": request("POST", cancel, [json], '["Comment"]'),
    "comment-number": request("POST", cancel, [json], '{"Comment": 7}'),
    "comment-lowercase": request("POST", cancel, [json], '{"comment": "c"}'),
    "comment-too-long": request("POST", cancel, [json], comment("x" * 1001)),
    "comment-unicode": request("POST", cancel, [json], '{"Comment": "\\u00e9t\\u00e9 \\ud83d\\ude00 \\n line"}'),
    "body-empty": request("POST", cancel, [json], ""),
    "body-too-large": request("POST", cancel, [json], '{"Comment": "%s"}' % ("y" * 66000)),
    "scan-bad-type": request("POST", f"/api/machines/{MACHINE}/runAntiVirusScan", [json], '{"Comment": "c", "ScanType": "Deep"}'),
    "quarantine-bad-sha1": request("POST", f"/api/machines/{MACHINE}/StopAndQuarantineFile", [json], '{"Comment": "c", "Sha1": "zz"}'),
    "bad-client-name": request("POST", cancel, [json, "Mdegate-Client: bad name!"], comment()),
    "list-bad-option": request("GET", "/api/machineactions?$expand=all&$top=0"),
    "unknown-route": request("GET", "/v2/nothing"),
    "duplicate-content-length": request("POST", cancel, ["Content-Length: 5", "Content-Length: 6"], "12345"),
    "header-without-colon": b"GET /healthz HTTP/1.1\r\nHost localhost\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "truncated-body": request("POST", cancel, [json, "Content-Length: 100"], comment()),
}


def config_seeds():
    seeds = {}
    for name in ("mdegate.yaml", "local.yaml"):
        with open(os.path.join(ROOT, "config", name), "rb") as f:
            seeds["config-" + name.replace(".yaml", "")] = f.read()
    token = "auth:\n  token_file: /run/mdegate/token\n"
    oauth = "auth:\n  tenant_id: contoso.onmicrosoft.com\n  client_id: 2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60\n"
    seeds.update({
        "minimal-token": token.encode(),
        "oauth-secret-from-credentials": (oauth + "%env\nCREDENTIALS_DIRECTORY=/run/credentials/mdegate.service\n").encode(),
        "oauth-certificate": (oauth + "  client_certificate_file: cert.pem\n  client_key_file: key.pem\n").encode(),
        "quota": (token + 'quota:\n  limits: ["5/1s", "12/4s"]\n  guard: 30ms\n  apis:\n    isolate: ["10/1m"]\n    cancel: 7/1s,70/1m\n').encode(),
        "durations": (token + "state:\n  retention: 1.5h\nupstream:\n  connect_timeout: 250ms\n  request_timeout: 1m\n"
                      "retry:\n  max_attempts: 2\n  initial_backoff: 0.5s\n  max_backoff: 2s\nqueue:\n  max_pending: 10\n").encode(),
        "cloud-gcc-high": (token + "upstream:\n  cloud: gcc-high\n  base_url: https://api-gov.securitycenter.microsoft.us/\n").encode(),
        "proxy-with-password": (token + "%env\nMDEGATE_UPSTREAM_PROXY=http://user:s3cret-pa55word@proxy.example:3128\n").encode(),
        "shared-quota": (oauth + "  client_secret_file: /etc/mdegate/secret\nshared_quota:\n  url: postgresql://mdegate@db.example:5432/mdegate?sslmode=verify-full\n"
                         "  key: contoso/mde\n  host_name: soar-1\n").encode(),
        "shared-quota-password": (token + "%env\nMDEGATE_SHARED_QUOTA_URL=postgres://u:hunter2-hunter2@db/x\n").encode(),
        "shared-quota-socket": (token + "shared_quota:\n  url: postgresql:///mdegate?host=/run/postgresql&port=5433\n").encode(),
        "socket-and-metrics": (token + 'socket:\n  path: run/mdegate.sock\n  mode: "0600"\nmetrics:\n  address: "[::1]:9469"\nlog:\n  level: DEBUG\n  format: json\n').encode(),
        "environment-overrides": ("%env\nMDEGATE_AUTH_TOKEN_FILE=/run/token\nMDEGATE_UPSTREAM_BASE_URL=http://127.0.0.1:8787\n"
                                  "MDEGATE_QUOTA_LIMITS=5/1s, 12/4s\nMDEGATE_QUOTA_GUARD=30ms\nMDEGATE_SOCKET_MODE=0600\n"
                                  "MDEGATE_QUOTA_LIMIT=5/1s\nMDEGATE_SOCKET=/run/x.sock\nMDEGATE_LOG_LEVEL=\n").encode(),
        "short-names": (token + "%env\nA=5/1s\nb=debug\nzz=0\n").encode(),
        "unknown-keys": (token + "upstream:\n  token_file: x\nquota:\n  limit: 5/1s\nauth2: {}\nsocket:\n").encode(),
        "invalid-values": (token + 'quota:\n  limits: ["100/1x", "0/1m", "5/0s"]\nsocket:\n  mode: "0999"\n'
                           "upstream:\n  max_concurrency: many\n  base_url: http://api.example\nlog:\n  level: loud\n").encode(),
        "quoted-strings": (b'auth:\n  token_file: "/tmp/a \\"quoted\\" #path\\\\x: no"\nshared_quota:\n  key: "tab\\there"\n'),
        "not-yaml": b"auth: [unclosed\n  - : :\n",
        "all-commented": b"# nothing here\n---\n",
        "list-for-scalar": (token + "log:\n  level: [info, debug]\n").encode(),
        # What FuzzConfig found, kept so that every run checks them again.
        "finding-long-default-key": (oauth.replace("client_id: ", "client_id: 2f" + "\\" * 176) + "  client_secret_file: /s\n"
                                     "shared_quota:\n  url: postgresql://mdegate@db.example/mdegate\n").encode(),
        "finding-proxy-value-in-message": (token + "%env\nMDEGATE_UPSTREAM_PROXY=_UPSTREAM_PROX\n").encode(),
    })
    return seeds


def write(target, seeds):
    directory = os.path.join(HERE, target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


write("FuzzRequest", REQUESTS)
write("FuzzConfig", config_seeds())
