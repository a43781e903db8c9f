#!/bin/sh
# Runs nginx and reloads it whenever the csi.spire.io driver swaps in a rotated SVID. The driver replaces all
# files of the volume at once by renaming the ..data link, so comparing where ..data points is enough; a
# reload is cheap and keeps open connections.
set -eu

svid_dir=${SVID_DIR:-/run/svid}
interval=${RELOAD_CHECK_SECONDS:-30}

nginx -g 'daemon off;' &
nginx_pid=$!
trap 'kill -TERM "$nginx_pid"; wait "$nginx_pid"; exit 0' TERM INT

current=$(readlink "$svid_dir/..data")
while kill -0 "$nginx_pid" 2>/dev/null; do
    sleep "$interval" &
    wait $! || true
    latest=$(readlink "$svid_dir/..data")
    if [ "$latest" != "$current" ]; then
        echo "SVID files changed ($current -> $latest): reloading nginx"
        nginx -s reload
        current=$latest
    fi
done
wait "$nginx_pid"
