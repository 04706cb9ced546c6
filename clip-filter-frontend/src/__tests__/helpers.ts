import { vi } from 'vitest'

/** A stub for global fetch: routes "METHOD /path" (path without the /api base) to JSON responses. */
export type Route = (init: RequestInit | undefined, url: URL) => { status?: number; body?: unknown } | Promise<{ status?: number; body?: unknown }>

export interface FetchCall {
  method: string
  path: string
  init?: RequestInit
}

export function stubFetch(routes: Record<string, Route>) {
  const calls: FetchCall[] = []
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input), 'http://localhost')
    const method = (init?.method ?? 'GET').toUpperCase()
    const path = url.pathname.replace(/^\/api/, '')
    calls.push({ method, path, init })
    const route = routes[`${method} ${path}`]
    if (!route) {
      return new Response(JSON.stringify({ error: { code: 'not_found', message: `no route ${method} ${path}` } }), {
        status: 404,
        headers: { 'Content-Type': 'application/json' },
      })
    }
    const { status = 200, body } = await route(init, url)
    return new Response(body === undefined ? null : JSON.stringify(body), {
      status,
      headers: { 'Content-Type': 'application/json' },
    })
  })
  vi.stubGlobal('fetch', fn)
  return { fn, calls }
}

export function pngFile(name: string): File {
  // content does not matter to the UI; the type does
  return new File([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10])], name, { type: 'image/png' })
}

export const readyInfo = {
  version: '0.1.0',
  state: 'ready',
  model: 'clip-filter-tiny',
  pretrained: 'random',
  weights: 'random',
  device: 'cpu',
  dtype: 'float32',
  dim: 64,
  logit_scale: 100,
  context_length: 77,
}
