// What the page-wide banners say, from GET /info and the `weights` of the latest model response.
import type { Info, Weights } from './types'

export interface Banner {
  id: 'unreachable' | 'loading' | 'unavailable' | 'random'
  /** alert: something is wrong the user must know; status: informative, polite */
  role: 'alert' | 'status'
  title: string
  detail?: string
  fix?: string
}

export function modelBanners(
  info: Info | null,
  infoError: string | null,
  responseWeights: Weights | null = null,
): Banner[] {
  const banners: Banner[] = []
  if (infoError && !info) {
    banners.push({ id: 'unreachable', role: 'alert', title: 'The API cannot be reached', detail: infoError })
  }
  if (info?.state === 'loading') {
    banners.push({
      id: 'loading',
      role: 'status',
      title: 'The model is loading',
      detail: info.reason ?? 'Matching and search are available once it is ready.',
    })
  } else if (info && info.state !== 'ready') {
    banners.push({
      id: 'unavailable',
      role: 'alert',
      title: 'The model is unavailable',
      detail: info.reason ?? 'The model could not be loaded.',
      fix: info.fix,
    })
  }
  if (info?.weights === 'random' || responseWeights === 'random') {
    banners.push({
      id: 'random',
      role: 'alert',
      title: 'Random weights: scores are meaningless',
      detail:
        'The model was started with randomly initialised weights (CLIP_PRETRAINED=random), so matches and ' +
        'search rankings carry no meaning.',
      fix: 'Start the service with pretrained weights, e.g. CLIP_PRETRAINED=openai.',
    })
  }
  return banners
}
