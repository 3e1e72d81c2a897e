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

/**
 * A one-way message both peers agree on: its name, who may send it, and the
 * schema of its parameters, checked on receipt like a method's. It has no
 * answer, so a sender never waits and a receiver never owes anything.
 */
export interface NotificationDescriptor<P extends z.ZodType = z.ZodType> {
  name: string;
  direction: Direction;
  params: P;
  notification: true;
}

export function defineNotification<P extends z.ZodType>(n: Omit<NotificationDescriptor<P>, 'notification'>): NotificationDescriptor<P> {
  return { ...n, notification: true };
}

export type NotificationParams<N extends NotificationDescriptor> = z.infer<N['params']>;
export type NotificationHandler = (params: unknown) => void;

export interface MethodTable {
  get(name: string): MethodDescriptor | undefined;
  notification(name: string): NotificationDescriptor | undefined;
}

export function methodTable(methods: readonly (MethodDescriptor | NotificationDescriptor)[]): MethodTable {
  const byName = new Map<string, MethodDescriptor>();
  const notes = new Map<string, NotificationDescriptor>();
  for (const m of methods) {
    if (byName.has(m.name) || notes.has(m.name)) throw new Error(`method ${m.name} defined twice`);
    if ('notification' in m) notes.set(m.name, m);
    else byName.set(m.name, m);
  }
  return { get: (name) => byName.get(name), notification: (name) => notes.get(name) };
}
