// The one place that talks HTTP. Every path is relative to the API root, under API_BASE ('/api' by default).
import type {
  ApiErrorBody,
  Collection,
  Info,
  ItemKind,
  ItemsPage,
  Job,
  MapResponse,
  MatchResponse,
  Projection,
  SearchResponse,
} from './types'
import { authHeaders, currentApiKey, notifyAuthRequired } from './auth'

function trimSlash(base: string): string {
  return base.replace(/\/+$/, '')
}

export const API_BASE: string = trimSlash(import.meta.env.VITE_API_BASE ?? '/api')

/** An API path ("/info") or an item url from the API ("/collections/c/items/3/thumbnail") -> a fetchable URL. */
export function apiUrl(path: string): string {
  if (/^(https?:|data:|blob:)/.test(path)) return path
  return `${API_BASE}${path.startsWith('/') ? '' : '/'}${path}`
}

export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly body: ApiErrorBody | null

  constructor(status: number, code: string, message: string, body: ApiErrorBody | null = null) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.body = body
  }
}

/** A readable message for anything thrown by a call below. */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) {
    const fix = err.body?.fix ? ` ${err.body.fix}` : ''
    return `${err.message}${fix}`
  }
  if (err instanceof Error) return err.message
  return String(err)
}

async function parseError(res: Response): Promise<ApiError> {
  let body: unknown = null
  try {
    body = await res.json()
  } catch {
    // not JSON: a proxy error page, say
  }
  const err = (body as { error?: ApiErrorBody } | null)?.error
  if (err && typeof err.message === 'string') {
    return new ApiError(res.status, err.code ?? 'error', err.message, err)
  }
  // FastAPI's default shape, just in case
  const detail = (body as { detail?: unknown } | null)?.detail
  const message = typeof detail === 'string' ? detail : `${res.status} ${res.statusText || 'request failed'}`
  return new ApiError(res.status, 'http_error', message)
}

export async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  let res: Response
  try {
    res = await fetch(apiUrl(path), {
      ...init,
      headers: { Accept: 'application/json', ...authHeaders(), ...(init.headers ?? {}) },
    })
  } catch (e) {
    throw new ApiError(0, 'network_error', `Cannot reach the API (${e instanceof Error ? e.message : String(e)}).`)
  }
  if (res.status === 401) notifyAuthRequired()
  if (!res.ok) throw await parseError(res)
  if (res.status === 204) return undefined as T
  return (await res.json()) as T
}

function postJson<T>(path: string, body: unknown, method = 'POST'): Promise<T> {
  return request<T>(path, {
    method,
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  })
}

function postForm<T>(path: string, form: FormData): Promise<T> {
  // No Content-Type header: the browser sets multipart/form-data with its boundary.
  return request<T>(path, { method: 'POST', body: form })
}

const enc = encodeURIComponent

export function getInfo(): Promise<Info> {
  return request<Info>('/info')
}

export function matchImages(images: File[], texts: string[]): Promise<MatchResponse> {
  const form = new FormData()
  for (const image of images) form.append('images', image, image.name)
  for (const text of texts) form.append('texts', text)
  return postForm<MatchResponse>('/image_text_similarity_best_match', form)
}

export async function listCollections(): Promise<Collection[]> {
  const res = await request<{ collections: Collection[] }>('/collections')
  return res.collections
}

export function getCollection(name: string): Promise<Collection> {
  return request<Collection>(`/collections/${enc(name)}`)
}

export function createCollection(name: string, description?: string): Promise<Collection> {
  return postJson<Collection>('/collections', description ? { name, description } : { name })
}

export function listItems(name: string, offset: number, limit: number): Promise<ItemsPage> {
  return request<ItemsPage>(`/collections/${enc(name)}/items?offset=${offset}&limit=${limit}`)
}

export async function startJob(name: string, files: File[]): Promise<Job> {
  const form = new FormData()
  for (const file of files) form.append('files', file, file.name)
  const res = await postForm<Job & { job_id?: string }>(`/collections/${enc(name)}/jobs`, form)
  return { ...res, id: res.id ?? res.job_id ?? '' }
}

export function getJob(id: string): Promise<Job> {
  return request<Job>(`/jobs/${enc(id)}`)
}

export type SearchQuery =
  | { type: 'text'; text: string }
  | { type: 'image'; image: File }
  | { type: 'item'; itemId: number; label?: string }

export interface SearchOptions {
  topK: number
  offset: number
  kind?: ItemKind
  filters?: Record<string, string>
  minScore?: number
}

export function search(name: string, query: SearchQuery, opts: SearchOptions): Promise<SearchResponse> {
  const path = `/collections/${enc(name)}/search`
  const hasFilters = opts.filters && Object.keys(opts.filters).length > 0
  if (query.type === 'image') {
    const form = new FormData()
    form.append('image', query.image, query.image.name)
    form.append('top_k', String(opts.topK))
    form.append('offset', String(opts.offset))
    if (opts.kind) form.append('kind', opts.kind)
    if (opts.minScore !== undefined) form.append('min_score', String(opts.minScore))
    if (hasFilters) form.append('filters', JSON.stringify(opts.filters))
    return postForm<SearchResponse>(path, form)
  }
  const body: Record<string, unknown> = { top_k: opts.topK, offset: opts.offset }
  if (query.type === 'text') body.text = query.text
  else body.item_id = query.itemId
  if (opts.kind) body.kind = opts.kind
  if (opts.minScore !== undefined) body.min_score = opts.minScore
  if (hasFilters) body.filters = opts.filters
  return postJson<SearchResponse>(path, body)
}

export function getMap(name: string): Promise<MapResponse> {
  return request<MapResponse>(`/collections/${enc(name)}/map`)
}

export function projectText(name: string, text: string): Promise<Projection> {
  return postJson<Projection>(`/collections/${enc(name)}/map/project`, { text })
}

/** Whether `src` is one of this API's URLs (media that needs the key when one is set). */
export function isApiUrl(src: string): boolean {
  return src.startsWith(`${API_BASE}/`)
}

/**
 * An object URL for an API resource fetched with the key (an <img src> or a link cannot send headers). The blob
 * keeps the type only when it is an image; anything else becomes text/plain, so nothing runs on this origin.
 */
export async function fetchObjectUrl(src: string): Promise<string> {
  let res: Response
  try {
    res = await fetch(src, { headers: authHeaders() })
  } catch (e) {
    throw new ApiError(0, 'network_error', `Cannot reach the API (${e instanceof Error ? e.message : String(e)}).`)
  }
  if (res.status === 401) notifyAuthRequired()
  if (!res.ok) throw await parseError(res)
  const blob = await res.blob()
  const type = blob.type.startsWith('image/') ? blob.type : 'text/plain'
  return URL.createObjectURL(blob.type === type ? blob : new Blob([blob], { type }))
}

/** True when media must be fetched with the key instead of loaded by the browser directly. */
export function mediaNeedsKey(src: string | undefined): boolean {
  return !!src && isApiUrl(src) && currentApiKey() !== null
}
