/**
 * One task's object-store traffic: the node's store seen through a counter of the bytes this task
 * read and wrote, for its span (gpu-node/worker/node-loop.ts). Counted per task rather than as a
 * difference of the node's totals, which a second decode running at once would blur.
 */
import { bodyLength, type ObjectStore, type PutResult } from "../../shared/store/object-store.js";

export interface TaskTraffic {
  readonly store: ObjectStore;
  readonly read: number;
  readonly written: number;
}

export function taskTraffic(store: ObjectStore): TaskTraffic {
  let read = 0;
  let written = 0;
  const counted: ObjectStore = {
    put: async (key, data, contentType): Promise<PutResult> => {
      const r = await store.put(key, data, contentType);
      written += bodyLength(data);
      return r;
    },
    putIfAbsent: async (key, data, contentType) => {
      const stored = await store.putIfAbsent(key, data, contentType);
      if (stored) written += bodyLength(data);
      return stored;
    },
    get: async (key) => {
      const data = await store.get(key);
      read += data.byteLength;
      return data;
    },
    head: (key) => store.head(key),
    delete: (key) => store.delete(key),
    list: (prefix) => store.list(prefix),
    deletePrefix: (prefix) => store.deletePrefix(prefix),
    presignedGetUrl: (key, expirySeconds) => store.presignedGetUrl(key, expirySeconds),
    // The node's store outlives its tasks.
    close: async () => undefined,
  };
  return {
    store: counted,
    get read() {
      return read;
    },
    get written() {
      return written;
    },
  };
}
