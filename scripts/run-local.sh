#!/usr/bin/env bash
# The quick start: builds mdegate, starts the MDE simulator on 127.0.0.1:8787 and the gateway with
# config/local.yaml in the foreground. Ctrl-C stops both. No Microsoft credentials are needed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
swift build --product mdegate
swift build --product mde-simulator
bin="$(swift build --show-bin-path)"

mkdir -p run
printf 'sim-token' > run/token

if curl -s -o /dev/null "http://127.0.0.1:8787/_sim/stats"; then
    echo "A simulator already answers on 127.0.0.1:8787; using it." >&2
    simulator=""
else
    "$bin/mde-simulator" --port 8787 --limit 100/1m --limit 1500/1h --quiet &
    simulator=$!
    trap '[ -n "$simulator" ] && kill "$simulator" 2>/dev/null || true' EXIT
fi

cat <<MSG

  mdegate is starting in front of the local MDE simulator (http://127.0.0.1:8787).
  In another terminal, from $(pwd):

    curl --unix-socket run/mdegate.sock -X POST \\
      http://localhost/api/machineactions/988cc94e-7a8f-4b28-ab65-54970c5d5018/cancel \\
      -d '{"Comment":"isolated by mistake"}'

    $bin/mdegate cancel 988cc94e-7a8f-4b28-ab65-54970c5d5018 --comment "isolated by mistake" --socket run/mdegate.sock
    $bin/mdegate isolate 1e5bc9d7e413ddd7902c2932e418702b84d0cc07 --comment "ransomware" --socket run/mdegate.sock
    $bin/mdegate actions --filter "type eq 'Isolate'" --socket run/mdegate.sock
    $bin/mdegate status --socket run/mdegate.sock

  Ctrl-C stops the gateway and the simulator.

MSG
"$bin/mdegate" serve --config config/local.yaml
