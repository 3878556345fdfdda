{#- Unpivot frame shares per ODD tag: one row per (row of `relation`, tag, value) with the frames that value
    covers. `shares` is a SQL expression of the JSON {value: share of frames} for tag `t` ('{t}' is replaced). -#}
{% macro odd_value_frames(relation, keys, frames, shares) %}
  {%- for tag in var('odd_tags') %}
  select {{ keys | join(', ') }}, '{{ tag }}' as tag, v.value as value,
         {{ frames }} * cast(json_extract(s.shares, '$."' || v.value || '"') as double) as value_frames
  from (select *, {{ shares | replace('{t}', tag) }} as shares from {{ relation }}) as s,
       unnest(json_keys(s.shares)) as v(value)
  {%- if not loop.last %}
  union all
  {%- endif %}
  {%- endfor %}
{% endmacro %}
