import { isTypedValue, variant, type TypedValue, type Vardict } from './bus.js';

/** Conversions between D-Bus values and the plain data the protocol carries. */
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A D-Bus bytestring (`ay`, NUL-terminated by convention) as UTF-8 text, or undefined if it is not UTF-8. */
export function bytesToString(bytes: unknown): string | undefined {
  if (!Buffer.isBuffer(bytes) && !(bytes instanceof Uint8Array)) return undefined;
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end--;
  try {
    return utf8.decode(bytes.subarray(0, end));
  } catch {
    return undefined;
  }
}

export function stringToBytes(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf8');
}

/** Read an a{sv} argument into a record of typed values, ignoring anything malformed. */
export function asVardict(value: unknown): Vardict {
  const out: Vardict = {};
  if (!value || typeof value !== 'object') return out;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) if (isTypedValue(v)) out[k] = v;
  return out;
}

export function typed(signature: string, value: unknown): TypedValue {
  return variant(signature, value);
}
