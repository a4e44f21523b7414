#!/usr/bin/env bash
# `npm run proto`: everything generated from proto/ (never edited by hand; the test
# test/unit/proto-generated.test.ts checks the committed files equal a fresh run). Writes under
# ROOT, the repository unless given:
#   proto/gen/                           TypeScript for @grpc/grpc-js (ts-proto, buf.gen.yaml)
#   proto/gen/framefarm/v1/jobs.binpb    jobs.proto and its imports as a FileDescriptorSet, named
#                                        and linked as protoc names them: what server reflection serves
#   shared/clients/python/framefarm/v1/  Python messages and stubs of jobs.proto (buf.gen.python.yaml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(cd "${1:-..}" && pwd)"
BUF=../node_modules/.bin/buf
"$BUF" lint
rm -rf "$ROOT/proto/gen" "$ROOT/shared/clients/python/framefarm"
"$BUF" generate -o "$ROOT/proto"
"$BUF" build --path framefarm/v1/jobs.proto -o "$ROOT/proto/gen/framefarm/v1/jobs.binpb"
"$BUF" generate --template buf.gen.python.yaml --path framefarm/v1/jobs.proto -o "$ROOT/shared/clients/python"
