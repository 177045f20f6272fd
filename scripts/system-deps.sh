#!/usr/bin/env bash
# Installs the system packages medblip uses when they are missing: a Java runtime (pycocoevalcap's
# PTB tokenizer and METEOR) and Chromium (the report's browser test). Without root or apt-get it
# only says what is missing: medblip still runs, computing the metrics that need no Java.
set -u
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    exit $?
fi
echo "system-deps: missing ${need[*]} (install them with your package manager); METEOR/PTB-tokenised metrics and the browser test will be skipped" >&2
exit 0
