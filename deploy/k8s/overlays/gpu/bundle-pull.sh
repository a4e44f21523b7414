#!/bin/sh
# Init step of every pod that opens the model bundle: mirrors s3://$FRAMEFARM_S3_BUCKET/bundles/<name>/
# into $FRAMEFARM_BUNDLE (<name> is its last path segment) with MinIO's client. Files already
# there with the same size and time are skipped, so a restarted pod on the same volume is quick.
set -eu
name="${FRAMEFARM_BUNDLE##*/}"
scheme=http
if [ "${FRAMEFARM_S3_TLS:-0}" = "1" ]; then scheme=https; fi
mc alias set farm "$scheme://$FRAMEFARM_S3" "$FRAMEFARM_S3_ACCESS_KEY" "$FRAMEFARM_S3_SECRET_KEY" >/dev/null
mc mirror --overwrite "farm/$FRAMEFARM_S3_BUCKET/bundles/$name" "$FRAMEFARM_BUNDLE"
test -f "$FRAMEFARM_BUNDLE/framefarm-bundle.json" || { echo "no framefarm-bundle.json under s3://$FRAMEFARM_S3_BUCKET/bundles/$name" >&2; exit 1; }
