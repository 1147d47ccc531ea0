export type Json =
  | string
  | number
  | boolean
  | null
  | { [key: string]: Json | undefined }
  | Json[]

export type Database = {
  public: {
    Tables: {
      edit_batches: {
        Row: {
          base: string | null
          base_color: string | null
          created_at: string
          guidance_scale: number | null
          height: number | null
          id: string
          idempotency_fingerprint: string | null
          idempotency_key: string | null
          input_paths: string[]
          loras: Json | null
          negative_prompt: string | null
          num_inference_steps: number | null
          output_format: string | null
          output_quality: number | null
          prompt: string
          reference_paths: string[]
          seed: number | null
          speed: string | null
          true_cfg_scale: number | null
          user_id: string | null
          width: number | null
        }
        Insert: {
          base?: string | null
          base_color?: string | null
          created_at?: string
          guidance_scale?: number | null
          height?: number | null
          id?: string
          idempotency_fingerprint?: string | null
          idempotency_key?: string | null
          input_paths: string[]
          loras?: Json | null
          negative_prompt?: string | null
          num_inference_steps?: number | null
          output_format?: string | null
          output_quality?: number | null
          prompt: string
          reference_paths?: string[]
          seed?: number | null
          speed?: string | null
          true_cfg_scale?: number | null
          user_id?: string | null
          width?: number | null
        }
        Update: {
          base?: string | null
          base_color?: string | null
          created_at?: string
          guidance_scale?: number | null
          height?: number | null
          id?: string
          idempotency_fingerprint?: string | null
          idempotency_key?: string | null
          input_paths?: string[]
          loras?: Json | null
          negative_prompt?: string | null
          num_inference_steps?: number | null
          output_format?: string | null
          output_quality?: number | null
          prompt?: string
          reference_paths?: string[]
          seed?: number | null
          speed?: string | null
          true_cfg_scale?: number | null
          user_id?: string | null
          width?: number | null
        }
        Relationships: []
      }
      edit_idle_workers: {
        Row: {
          seen_at: string
          worker_id: string
        }
        Insert: {
          seen_at?: string
          worker_id: string
        }
        Update: {
          seen_at?: string
          worker_id?: string
        }
        Relationships: []
      }
      edit_input_usage: {
        Row: {
          bytes: number
          folder: string
          objects: number
        }
        Insert: {
          bytes?: number
          folder: string
          objects?: number
        }
        Update: {
          bytes?: number
          folder?: string
          objects?: number
        }
        Relationships: []
      }
      edit_loras: {
        Row: {
          created_at: string
          description: string
          enabled: boolean
          name: string
        }
        Insert: {
          created_at?: string
          description?: string
          enabled?: boolean
          name: string
        }
        Update: {
          created_at?: string
          description?: string
          enabled?: boolean
          name?: string
        }
        Relationships: []
      }
      edit_queue_settings: {
        Row: {
          awaiting_image_ttl: string
          default_speed: string | null
          fair_share_quantum: string
          id: boolean
          readiness_recheck_batch: number
          updated_at: string
        }
        Insert: {
          awaiting_image_ttl?: string
          default_speed?: string | null
          fair_share_quantum?: string
          id?: boolean
          readiness_recheck_batch?: number
          updated_at?: string
        }
        Update: {
          awaiting_image_ttl?: string
          default_speed?: string | null
          fair_share_quantum?: string
          id?: boolean
          readiness_recheck_batch?: number
          updated_at?: string
        }
        Relationships: []
      }
      edit_queue_sweep_state: {
        Row: {
          id: boolean
          recheck_after_created: string | null
          recheck_after_id: string | null
        }
        Insert: {
          id?: boolean
          recheck_after_created?: string | null
          recheck_after_id?: string | null
        }
        Update: {
          id?: boolean
          recheck_after_created?: string | null
          recheck_after_id?: string | null
        }
        Relationships: []
      }
      edit_request_watches: {
        Row: {
          expires_at: string
          request_id: string
          watcher: string
        }
        Insert: {
          expires_at: string
          request_id: string
          watcher: string
        }
        Update: {
          expires_at?: string
          request_id?: string
          watcher?: string
        }
        Relationships: []
      }
      edit_requests: {
        Row: {
          attempts: number
          base: string
          base_color: string
          batch_id: string | null
          claimed_by: string | null
          cost: number | null
          created_at: string
          error: string | null
          error_code: string | null
          error_message: string | null
          fair_tag: string
          finished_at: string | null
          guidance_scale: number
          height: number | null
          id: string
          idempotency_fingerprint: string | null
          idempotency_key: string | null
          input_bucket: string
          input_paths: string[]
          inputs_expired_at: string | null
          lease_expires_at: string | null
          loras: Json
          max_attempts: number
          negative_prompt: string
          next_attempt_at: string | null
          num_inference_steps: number
          output_bucket: string
          output_expired_at: string | null
          output_format: string | null
          output_path: string | null
          output_quality: number | null
          preview_path: string | null
          preview_step: number | null
          priority: number
          progress: number
          prompt: string
          result: Json | null
          seed: number | null
          speed: string | null
          started_at: string | null
          status: string
          true_cfg_scale: number
          updated_at: string
          user_id: string | null
          webhook_endpoint_id: string | null
          width: number | null
        }
        Insert: {
          attempts?: number
          base?: string
          base_color?: string
          batch_id?: string | null
          claimed_by?: string | null
          cost?: number | null
          created_at?: string
          error?: string | null
          error_code?: string | null
          error_message?: string | null
          fair_tag?: string
          finished_at?: string | null
          guidance_scale?: number
          height?: number | null
          id?: string
          idempotency_fingerprint?: string | null
          idempotency_key?: string | null
          input_bucket?: string
          input_paths: string[]
          inputs_expired_at?: string | null
          lease_expires_at?: string | null
          loras?: Json
          max_attempts?: number
          negative_prompt?: string
          next_attempt_at?: string | null
          num_inference_steps?: number
          output_bucket?: string
          output_expired_at?: string | null
          output_format?: string | null
          output_path?: string | null
          output_quality?: number | null
          preview_path?: string | null
          preview_step?: number | null
          priority?: number
          progress?: number
          prompt: string
          result?: Json | null
          seed?: number | null
          speed?: string | null
          started_at?: string | null
          status?: string
          true_cfg_scale?: number
          updated_at?: string
          user_id?: string | null
          webhook_endpoint_id?: string | null
          width?: number | null
        }
        Update: {
          attempts?: number
          base?: string
          base_color?: string
          batch_id?: string | null
          claimed_by?: string | null
          cost?: number | null
          created_at?: string
          error?: string | null
          error_code?: string | null
          error_message?: string | null
          fair_tag?: string
          finished_at?: string | null
          guidance_scale?: number
          height?: number | null
          id?: string
          idempotency_fingerprint?: string | null
          idempotency_key?: string | null
          input_bucket?: string
          input_paths?: string[]
          inputs_expired_at?: string | null
          lease_expires_at?: string | null
          loras?: Json
          max_attempts?: number
          negative_prompt?: string
          next_attempt_at?: string | null
          num_inference_steps?: number
          output_bucket?: string
          output_expired_at?: string | null
          output_format?: string | null
          output_path?: string | null
          output_quality?: number | null
          preview_path?: string | null
          preview_step?: number | null
          priority?: number
          progress?: number
          prompt?: string
          result?: Json | null
          seed?: number | null
          speed?: string | null
          started_at?: string | null
          status?: string
          true_cfg_scale?: number
          updated_at?: string
          user_id?: string | null
          webhook_endpoint_id?: string | null
          width?: number | null
        }
        Relationships: [
          {
            foreignKeyName: "edit_requests_batch_id_fkey"
            columns: ["batch_id"]
            isOneToOne: false
            referencedRelation: "edit_batch_progress"
            referencedColumns: ["id"]
          },
          {
            foreignKeyName: "edit_requests_batch_id_fkey"
            columns: ["batch_id"]
            isOneToOne: false
            referencedRelation: "edit_batches"
            referencedColumns: ["id"]
          },
          {
            foreignKeyName: "edit_requests_webhook_endpoint_id_fkey"
            columns: ["webhook_endpoint_id"]
            isOneToOne: false
            referencedRelation: "edit_webhook_endpoints"
            referencedColumns: ["id"]
          },
        ]
      }
      edit_retention_held_paths: {
        Row: {
          bucket: string
          named_until: string
          path: string
        }
        Insert: {
          bucket: string
          named_until: string
          path: string
        }
        Update: {
          bucket?: string
          named_until?: string
          path?: string
        }
        Relationships: []
      }
      edit_retention_state: {
        Row: {
          held_by: string | null
          id: boolean
          inputs_from_at: string | null
          inputs_from_id: string | null
          last_run_at: string | null
          lease_expires_at: string | null
          orphans_after: string | null
          outputs_from_at: string | null
          outputs_from_id: string | null
        }
        Insert: {
          held_by?: string | null
          id?: boolean
          inputs_from_at?: string | null
          inputs_from_id?: string | null
          last_run_at?: string | null
          lease_expires_at?: string | null
          orphans_after?: string | null
          outputs_from_at?: string | null
          outputs_from_id?: string | null
        }
        Update: {
          held_by?: string | null
          id?: boolean
          inputs_from_at?: string | null
          inputs_from_id?: string | null
          last_run_at?: string | null
          lease_expires_at?: string | null
          orphans_after?: string | null
          outputs_from_at?: string | null
          outputs_from_id?: string | null
        }
        Relationships: []
      }
      edit_user_limits: {
        Row: {
          max_cost_per_hour: number | null
          max_in_flight: number | null
          max_requests_per_hour: number | null
          max_stored_input_bytes: number | null
          max_stored_inputs: number | null
          note: string | null
          updated_at: string
          user_id: string
        }
        Insert: {
          max_cost_per_hour?: number | null
          max_in_flight?: number | null
          max_requests_per_hour?: number | null
          max_stored_input_bytes?: number | null
          max_stored_inputs?: number | null
          note?: string | null
          updated_at?: string
          user_id: string
        }
        Update: {
          max_cost_per_hour?: number | null
          max_in_flight?: number | null
          max_requests_per_hour?: number | null
          max_stored_input_bytes?: number | null
          max_stored_inputs?: number | null
          note?: string | null
          updated_at?: string
          user_id?: string
        }
        Relationships: []
      }
      edit_user_usage: {
        Row: {
          hour_cost: number
          hour_requests: number
          hour_start: string | null
          previous_hour_cost: number
          previous_hour_requests: number
          updated_at: string
          user_id: string
        }
        Insert: {
          hour_cost?: number
          hour_requests?: number
          hour_start?: string | null
          previous_hour_cost?: number
          previous_hour_requests?: number
          updated_at?: string
          user_id: string
        }
        Update: {
          hour_cost?: number
          hour_requests?: number
          hour_start?: string | null
          previous_hour_cost?: number
          previous_hour_requests?: number
          updated_at?: string
          user_id?: string
        }
        Relationships: []
      }
      edit_webhook_allowed_hosts: {
        Row: {
          created_at: string
          host: string
          note: string | null
        }
        Insert: {
          created_at?: string
          host: string
          note?: string | null
        }
        Update: {
          created_at?: string
          host?: string
          note?: string | null
        }
        Relationships: []
      }
      edit_webhook_circuits: {
        Row: {
          consecutive_failures: number
          endpoint_id: string
          open_until: string | null
          updated_at: string
        }
        Insert: {
          consecutive_failures?: number
          endpoint_id: string
          open_until?: string | null
          updated_at?: string
        }
        Update: {
          consecutive_failures?: number
          endpoint_id?: string
          open_until?: string | null
          updated_at?: string
        }
        Relationships: [
          {
            foreignKeyName: "edit_webhook_circuits_endpoint_id_fkey"
            columns: ["endpoint_id"]
            isOneToOne: true
            referencedRelation: "edit_webhook_endpoints"
            referencedColumns: ["id"]
          },
        ]
      }
      edit_webhook_deliveries: {
        Row: {
          attempts: number
          claimed_by: string | null
          claimed_until: string | null
          created_at: string
          delivered_at: string | null
          endpoint_id: string
          event: string
          id: string
          last_attempt_at: string | null
          last_error: string | null
          last_status_code: number | null
          next_attempt_at: string
          payload: Json
          request_id: string
          status: string
          updated_at: string
          user_id: string | null
        }
        Insert: {
          attempts?: number
          claimed_by?: string | null
          claimed_until?: string | null
          created_at?: string
          delivered_at?: string | null
          endpoint_id: string
          event: string
          id?: string
          last_attempt_at?: string | null
          last_error?: string | null
          last_status_code?: number | null
          next_attempt_at?: string
          payload: Json
          request_id: string
          status?: string
          updated_at?: string
          user_id?: string | null
        }
        Update: {
          attempts?: number
          claimed_by?: string | null
          claimed_until?: string | null
          created_at?: string
          delivered_at?: string | null
          endpoint_id?: string
          event?: string
          id?: string
          last_attempt_at?: string | null
          last_error?: string | null
          last_status_code?: number | null
          next_attempt_at?: string
          payload?: Json
          request_id?: string
          status?: string
          updated_at?: string
          user_id?: string | null
        }
        Relationships: [
          {
            foreignKeyName: "edit_webhook_deliveries_endpoint_id_fkey"
            columns: ["endpoint_id"]
            isOneToOne: false
            referencedRelation: "edit_webhook_endpoints"
            referencedColumns: ["id"]
          },
          {
            foreignKeyName: "edit_webhook_deliveries_request_id_fkey"
            columns: ["request_id"]
            isOneToOne: false
            referencedRelation: "edit_requests"
            referencedColumns: ["id"]
          },
        ]
      }
      edit_webhook_endpoints: {
        Row: {
          created_at: string
          description: string | null
          events: string[]
          id: string
          secret: string
          updated_at: string
          url: string
          user_id: string
        }
        Insert: {
          created_at?: string
          description?: string | null
          events?: string[]
          id?: string
          secret: string
          updated_at?: string
          url: string
          user_id?: string
        }
        Update: {
          created_at?: string
          description?: string | null
          events?: string[]
          id?: string
          secret?: string
          updated_at?: string
          url?: string
          user_id?: string
        }
        Relationships: []
      }
      edit_webhook_settings: {
        Row: {
          allow_any_port: boolean
          allow_http: boolean
          allow_private_addresses: boolean
          allowed_ports: number[]
          id: boolean
          max_in_flight_per_endpoint: number
          max_in_flight_per_user: number
          updated_at: string
        }
        Insert: {
          allow_any_port?: boolean
          allow_http?: boolean
          allow_private_addresses?: boolean
          allowed_ports?: number[]
          id?: boolean
          max_in_flight_per_endpoint?: number
          max_in_flight_per_user?: number
          updated_at?: string
        }
        Update: {
          allow_any_port?: boolean
          allow_http?: boolean
          allow_private_addresses?: boolean
          allowed_ports?: number[]
          id?: boolean
          max_in_flight_per_endpoint?: number
          max_in_flight_per_user?: number
          updated_at?: string
        }
        Relationships: []
      }
    }
    Views: {
      edit_batch_progress: {
        Row: {
          awaiting_image: number | null
          canceled: number | null
          created_at: string | null
          failed: number | null
          finished: number | null
          id: string | null
          last_finished_at: string | null
          processing: number | null
          progress: number | null
          prompt: string | null
          queued: number | null
          requests: number | null
          succeeded: number | null
          user_id: string | null
        }
        Relationships: []
      }
      edit_requests_hourly: {
        Row: {
          awaiting_image: number | null
          canceled: number | null
          failed: number | null
          failure_rate: number | null
          hour: string | null
          processing: number | null
          processing_p50_s: number | null
          processing_p95_s: number | null
          queue_wait_p50_s: number | null
          queue_wait_p95_s: number | null
          queued: number | null
          requests: number | null
          succeeded: number | null
        }
        Relationships: []
      }
      edit_webhook_delivery_health: {
        Row: {
          dead: number | null
          dead_last_hour: number | null
          delivered: number | null
          delivered_last_hour: number | null
          delivering: number | null
          endpoints_backed_off: number | null
          failure_rate_last_hour: number | null
          oldest_pending_age_s: number | null
          pending: number | null
          retried_rate_last_hour: number | null
        }
        Relationships: []
      }
    }
    Functions: {
      cancel_edit_batch: { Args: { p_id: string }; Returns: number }
      cancel_edit_request: { Args: { p_id: string }; Returns: boolean }
      claim_edit_request: {
        Args: {
          p_lease_seconds?: number
          p_request_id?: string
          p_worker_id: string
        }
        Returns: {
          attempts: number
          base: string
          base_color: string
          batch_id: string | null
          claimed_by: string | null
          cost: number | null
          created_at: string
          error: string | null
          error_code: string | null
          error_message: string | null
          fair_tag: string
          finished_at: string | null
          guidance_scale: number
          height: number | null
          id: string
          idempotency_fingerprint: string | null
          idempotency_key: string | null
          input_bucket: string
          input_paths: string[]
          inputs_expired_at: string | null
          lease_expires_at: string | null
          loras: Json
          max_attempts: number
          negative_prompt: string
          next_attempt_at: string | null
          num_inference_steps: number
          output_bucket: string
          output_expired_at: string | null
          output_format: string | null
          output_path: string | null
          output_quality: number | null
          preview_path: string | null
          preview_step: number | null
          priority: number
          progress: number
          prompt: string
          result: Json | null
          seed: number | null
          speed: string | null
          started_at: string | null
          status: string
          true_cfg_scale: number
          updated_at: string
          user_id: string | null
          webhook_endpoint_id: string | null
          width: number | null
        }[]
        SetofOptions: {
          from: "*"
          to: "edit_requests"
          isOneToOne: false
          isSetofReturn: true
        }
      }
      claim_edit_request_ahead: {
        Args: {
          p_idle_seconds?: number
          p_lease_seconds?: number
          p_worker_id: string
        }
        Returns: {
          attempts: number
          base: string
          base_color: string
          batch_id: string | null
          claimed_by: string | null
          cost: number | null
          created_at: string
          error: string | null
          error_code: string | null
          error_message: string | null
          fair_tag: string
          finished_at: string | null
          guidance_scale: number
          height: number | null
          id: string
          idempotency_fingerprint: string | null
          idempotency_key: string | null
          input_bucket: string
          input_paths: string[]
          inputs_expired_at: string | null
          lease_expires_at: string | null
          loras: Json
          max_attempts: number
          negative_prompt: string
          next_attempt_at: string | null
          num_inference_steps: number
          output_bucket: string
          output_expired_at: string | null
          output_format: string | null
          output_path: string | null
          output_quality: number | null
          preview_path: string | null
          preview_step: number | null
          priority: number
          progress: number
          prompt: string
          result: Json | null
          seed: number | null
          speed: string | null
          started_at: string | null
          status: string
          true_cfg_scale: number
          updated_at: string
          user_id: string | null
          webhook_endpoint_id: string | null
          width: number | null
        }[]
        SetofOptions: {
          from: "*"
          to: "edit_requests"
          isOneToOne: false
          isSetofReturn: true
        }
      }
      claim_edit_webhook_deliveries: {
        Args: {
          p_lease_seconds?: number
          p_limit?: number
          p_worker_id: string
        }
        Returns: {
          attempts: number
          endpoint_id: string
          id: string
          payload: Json
          refusal: string
          request_id: string
          secret: string
          url: string
        }[]
      }
      complete_edit_request: {
        Args: {
          p_id: string
          p_output_path: string
          p_result?: Json
          p_worker_id: string
        }
        Returns: boolean
      }
      complete_edit_webhook_delivery: {
        Args: { p_id: string; p_status_code: number; p_worker_id: string }
        Returns: boolean
      }
      edit_input_space_refusal: { Args: never; Returns: string }
      edit_object_size: { Args: { p_metadata: Json }; Returns: number }
      edit_request_admission_check: {
        Args: {
          p_height: number
          p_inputs: number
          p_loras: number
          p_negative_chars: number
          p_prompt_chars: number
          p_requests: number
          p_speed: string
          p_steps: number
          p_true_cfg_scale: number
          p_width: number
        }
        Returns: {
          message: string
          refused: string
        }[]
      }
      edit_request_admission_start: {
        Args: { p_owner: string }
        Returns: string
      }
      edit_request_autoscaler_counts: {
        Args: never
        Returns: Record<string, unknown>
      }
      edit_request_backoff: { Args: { p_attempts: number }; Returns: string }
      edit_request_caller_is_operator: { Args: never; Returns: boolean }
      edit_request_cost: {
        Args: {
          p_height: number
          p_inputs: number
          p_loras: number
          p_negative_chars: number
          p_prompt_chars: number
          p_speed: string
          p_steps: number
          p_true_cfg_scale: number
          p_width: number
        }
        Returns: number
      }
      edit_request_inputs_present: {
        Args: { p_bucket: string; p_paths: string[] }
        Returns: boolean
      }
      edit_request_lock_slot: {
        Args: { p_bucket: string; p_path: string }
        Returns: number
      }
      edit_request_lock_slots: {
        Args: { p_slots: number[] }
        Returns: undefined
      }
      edit_request_loras_valid: { Args: { p_loras: Json }; Returns: boolean }
      edit_request_paths_owned: {
        Args: { p_paths: string[]; p_user: string }
        Returns: boolean
      }
      edit_request_paths_valid: {
        Args: { p_paths: string[] }
        Returns: boolean
      }
      edit_request_places: {
        Args: { p_ids: string[] }
        Returns: {
          fair_tag: string
          id: string
        }[]
      }
      edit_request_queue_stats: { Args: never; Returns: Json }
      edit_request_reason_codes: { Args: never; Returns: string[] }
      edit_request_reason_message: { Args: { p_code: string }; Returns: string }
      edit_request_retry_after: {
        Args: { p_cost: number; p_limit: string; p_requests: number }
        Returns: number
      }
      edit_request_run_cost: {
        Args: {
          p_adapters: number
          p_cfg: boolean
          p_height: number
          p_inputs: number
          p_loras: number
          p_negative_chars: number
          p_prompt_chars: number
          p_steps: number
          p_width: number
        }
        Returns: number
      }
      edit_request_sweep_status: { Args: never; Returns: string }
      edit_retention_candidates: {
        Args: {
          p_input_age: string
          p_lease_seconds?: number
          p_limit: number
          p_orphan_grace: string
          p_output_age: string
          p_worker_id: string
        }
        Returns: {
          bucket: string
          kind: string
          path: string
        }[]
      }
      edit_retention_mark: {
        Args: { p_bucket: string; p_paths: string[] }
        Returns: number
      }
      edit_retention_release: {
        Args: { p_worker_id: string }
        Returns: boolean
      }
      edit_user_hourly_estimate: {
        Args: {
          p_usage: Database["public"]["Tables"]["edit_user_usage"]["Row"]
        }
        Returns: Record<string, unknown>
      }
      edit_user_limits_of: {
        Args: { p_user: string }
        Returns: {
          max_cost_per_hour: number | null
          max_in_flight: number | null
          max_requests_per_hour: number | null
          max_stored_input_bytes: number | null
          max_stored_inputs: number | null
          note: string | null
          updated_at: string
          user_id: string
        }
        SetofOptions: {
          from: "*"
          to: "edit_user_limits"
          isOneToOne: true
          isSetofReturn: false
        }
      }
      edit_user_usage_now: {
        Args: {
          p_usage: Database["public"]["Tables"]["edit_user_usage"]["Row"]
        }
        Returns: {
          hour_cost: number
          hour_requests: number
          hour_start: string | null
          previous_hour_cost: number
          previous_hour_requests: number
          updated_at: string
          user_id: string
        }
        SetofOptions: {
          from: "*"
          to: "edit_user_usage"
          isOneToOne: true
          isSetofReturn: false
        }
      }
      edit_webhook_address_private: {
        Args: { p_host: string }
        Returns: boolean
      }
      edit_webhook_backoff: { Args: { p_attempts: number }; Returns: string }
      edit_webhook_circuit_failures: { Args: never; Returns: number }
      edit_webhook_host_allowed: { Args: { p_host: string }; Returns: boolean }
      edit_webhook_max_attempts: { Args: never; Returns: number }
      edit_webhook_max_endpoints: { Args: never; Returns: number }
      edit_webhook_new_secret: { Args: never; Returns: string }
      edit_webhook_url_host: { Args: { p_url: string }; Returns: string }
      edit_webhook_url_port: { Args: { p_url: string }; Returns: number }
      edit_webhook_url_refusal: { Args: { p_url: string }; Returns: string }
      ensure_edit_request_sweep: { Args: never; Returns: string }
      fail_edit_request: {
        Args: {
          p_error: string
          p_error_code?: string
          p_id: string
          p_retryable?: boolean
          p_worker_id: string
        }
        Returns: string
      }
      fail_edit_webhook_delivery: {
        Args: {
          p_error: string
          p_id: string
          p_permanent?: boolean
          p_status_code: number
          p_worker_id: string
        }
        Returns: string
      }
      heartbeat_edit_request: {
        Args: {
          p_id: string
          p_lease_seconds?: number
          p_progress?: number
          p_worker_id: string
        }
        Returns: string
      }
      preview_edit_request: {
        Args: {
          p_id: string
          p_path: string
          p_step: number
          p_worker_id: string
        }
        Returns: boolean
      }
      release_edit_request: {
        Args: { p_id: string; p_worker_id: string }
        Returns: boolean
      }
      replay_edit_webhook_delivery: { Args: { p_id: string }; Returns: boolean }
      requeue_expired_edit_requests: { Args: never; Returns: number }
      retry_edit_request: { Args: { p_id: string }; Returns: boolean }
      rotate_edit_webhook_secret: { Args: { p_id: string }; Returns: string }
      set_edit_request_watches: {
        Args: { p_request_ids: string[]; p_seconds: number; p_watcher: string }
        Returns: undefined
      }
    }
    Enums: {
      [_ in never]: never
    }
    CompositeTypes: {
      [_ in never]: never
    }
  }
}

type DatabaseWithoutInternals = Omit<Database, "__InternalSupabase">

type DefaultSchema = DatabaseWithoutInternals[Extract<keyof Database, "public">]

export type Tables<
  DefaultSchemaTableNameOrOptions extends
    | keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
        DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])
    : never = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
      DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])[TableName] extends {
      Row: infer R
    }
    ? R
    : never
  : DefaultSchemaTableNameOrOptions extends keyof (DefaultSchema["Tables"] &
        DefaultSchema["Views"])
    ? (DefaultSchema["Tables"] &
        DefaultSchema["Views"])[DefaultSchemaTableNameOrOptions] extends {
        Row: infer R
      }
      ? R
      : never
    : never

export type TablesInsert<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      Insert: infer I
    }
    ? I
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        Insert: infer I
      }
      ? I
      : never
    : never

export type TablesUpdate<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      Update: infer U
    }
    ? U
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        Update: infer U
      }
      ? U
      : never
    : never

export type Enums<
  DefaultSchemaEnumNameOrOptions extends
    | keyof DefaultSchema["Enums"]
    | { schema: keyof DatabaseWithoutInternals },
  EnumName extends DefaultSchemaEnumNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"]
    : never = never,
> = DefaultSchemaEnumNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"][EnumName]
  : DefaultSchemaEnumNameOrOptions extends keyof DefaultSchema["Enums"]
    ? DefaultSchema["Enums"][DefaultSchemaEnumNameOrOptions]
    : never

export type CompositeTypes<
  PublicCompositeTypeNameOrOptions extends
    | keyof DefaultSchema["CompositeTypes"]
    | { schema: keyof DatabaseWithoutInternals },
  CompositeTypeName extends PublicCompositeTypeNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"]
    : never = never,
> = PublicCompositeTypeNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"][CompositeTypeName]
  : PublicCompositeTypeNameOrOptions extends keyof DefaultSchema["CompositeTypes"]
    ? DefaultSchema["CompositeTypes"][PublicCompositeTypeNameOrOptions]
    : never

export const Constants = {
  public: {
    Enums: {},
  },
} as const
