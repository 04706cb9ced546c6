// Shapes of the clip-filter HTTP API (docs/architecture.md, "HTTP contract"). Only what the UI reads.

export type Weights = 'pretrained' | 'checkpoint' | 'random'

export interface ApiErrorBody {
  code: string
  message: string
  reason?: string
  fix?: string
  [key: string]: unknown
}

export interface ModelRef {
  name: string
  pretrained: string
  weights: Weights
  dim: number
}

export interface Info {
  version?: string
  state: 'loading' | 'ready' | 'failed'
  reason?: string
  fix?: string
  model?: string
  pretrained?: string
  weights?: Weights
  device?: string
  dtype?: string
  dim?: number
  logit_scale?: number
  context_length?: number
  limits?: Record<string, number>
}

export interface MatchScored {
  index: number
  filename?: string | null
  best_match: string
  best_index: number
  scores: number[]
  probabilities: number[]
  clip_score?: number
}

export interface MatchFailed {
  index: number
  filename?: string | null
  error: ApiErrorBody
}

export type MatchResult = MatchScored | MatchFailed

export interface MatchResponse {
  model?: ModelRef
  weights?: Weights
  texts: string[]
  truncated?: boolean[]
  results: MatchResult[]
  best_match?: string
}

export interface Collection {
  name: string
  description?: string | null
  model?: string
  pretrained?: string
  dim?: number
  item_count: number
  image_count?: number
  text_count?: number
  created_at?: string
}

export type ItemKind = 'image' | 'text'

export interface Item {
  id: number
  kind: ItemKind
  filename?: string | null
  mimetype?: string | null
  size?: number
  sha256?: string
  metadata?: Record<string, unknown> | null
  truncated?: boolean
  text?: string | null
  created_at?: string
  content_url: string
  thumbnail_url?: string | null
}

export interface ItemsPage {
  items: Item[]
  total: number
  offset: number
  limit: number
}

export interface SearchHit {
  id: number
  kind: ItemKind
  filename?: string | null
  mimetype?: string | null
  score: number
  metadata?: Record<string, unknown> | null
  content_url: string
  thumbnail_url?: string | null
  text?: string | null
}

export interface SearchResponse {
  results: SearchHit[]
  total?: number
  /** a text query longer than the model's context, cut to fit */
  query_truncated?: boolean
  model?: ModelRef
  weights?: Weights
}

export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'interrupted'

export interface JobFailure {
  filename?: string | null
  code?: string
  message: string
}

export interface Job {
  id: string
  collection?: string
  state: JobState
  done: number
  total: number
  added?: number
  duplicates?: number
  failed?: number
  failures?: JobFailure[]
  error?: ApiErrorBody | string | null
  created_at?: string
  updated_at?: string
}

export interface MapPoint {
  id: number
  x: number
  y: number
  kind: ItemKind
  filename?: string | null
  thumbnail_url?: string | null
  text?: string | null
}

export interface MapResponse {
  method: string
  points: MapPoint[]
  /** items in the collection; more than points.length when the map was drawn from a sample */
  total?: number
  sampled?: boolean
}

export interface Projection {
  x: number
  y: number
}
