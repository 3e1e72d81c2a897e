import type { z } from 'zod';

/**
 * A method both peers agree on: its name, who may call it, and the schemas of
 * its parameters and result. Portals define their methods with this, and the
 * connection validates both directions against the same descriptor.
 */
export type Direction = 'guest-to-host' | 'host-to-guest';

export interface MethodDescriptor<P extends z.ZodType = z.ZodType, R extends z.ZodType = z.ZodType> {
  name: string;
  direction: Direction;
  params: P;
  result: R;
}

export function defineMethod<P extends z.ZodType, R extends z.ZodType>(m: MethodDescriptor<P, R>): MethodDescriptor<P, R> {
  return m;
}

export type Params<M extends MethodDescriptor> = z.infer<M['params']>;
export type ResultOf<M extends MethodDescriptor> = z.infer<M['result']>;

export interface HandlerContext {
  signal: AbortSignal;
  requestId: number;
}

export type Handler<M extends MethodDescriptor> = (params: Params<M>, ctx: HandlerContext) => Promise<ResultOf<M>>;

export interface MethodTable {
  get(name: string): MethodDescriptor | undefined;
}

export function methodTable(methods: readonly MethodDescriptor[]): MethodTable {
  const byName = new Map<string, MethodDescriptor>();
  for (const m of methods) {
    if (byName.has(m.name)) throw new Error(`method ${m.name} defined twice`);
    byName.set(m.name, m);
  }
  return { get: (name) => byName.get(name) };
}
