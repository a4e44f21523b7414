/**
 * The one JSON codec of the farm's messages, events and records: a value of type T to UTF-8 JSON
 * bytes and back. Typed at the seam, so each message kind is encoded and decoded as one type.
 */
export interface JsonCodec<T> {
  encode(value: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function jsonCodec<T>(): JsonCodec<T> {
  return {
    encode: (value) => encoder.encode(JSON.stringify(value)),
    decode: (bytes) => JSON.parse(decoder.decode(bytes)) as T,
  };
}
