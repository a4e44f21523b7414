/**
 * Runs a suite once per bus implementation: in-process, and NATS JetStream on a real nats-server
 * (started on loopback with file storage in a temporary folder for the suite, stopped after).
 * The suite reads the bus through bus(), which is set before its first test.
 */
import { after, before, describe } from "node:test";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { Bus } from "../../shared/bus/bus.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import { startNatsServer, type LocalServer } from "../../coordinator/cli/local-servers.js";

export const BUS_KINDS = ["in-process", "NATS JetStream"] as const;

export function forEachBus(title: (kind: string) => string, suite: (kind: string, bus: () => Bus) => void): void {
  for (const kind of BUS_KINDS) {
    describe(title(kind), () => {
      let bus: Bus | undefined;
      let server: LocalServer | undefined;
      let dir: string | undefined;
      before(async () => {
        if (kind === "in-process") {
          bus = new MemoryBus();
          return;
        }
        dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-nats-"));
        server = await startNatsServer(path.join(dir, "js"));
        bus = await NatsBus.connect(`nats://${server.host}:${server.port}`);
      });
      after(async () => {
        await bus?.close();
        await server?.stop();
        if (dir !== undefined) await rm(dir, { recursive: true, force: true });
      });
      suite(kind, () => {
        if (bus === undefined) throw new Error("the bus is set in before()");
        return bus;
      });
    });
  }
}
