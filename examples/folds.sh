# Shared by the k-fold scripts (`source examples/folds.sh`): the folds, the tasks no run
# trains on or scores, and list arithmetic on comma-separated task lists.
FOLDS=7
# The 27 suite tasks that fail the filter (README, suite version 3): never trained on or
# evaluated.
FAIL=remove_spaces,acronym,count_even,years_later,hour_later,time_12_to_24,shift_letters,numbers_to_letters,spell_with_dashes,letters_to_word,remove_vowels,number_to_roman,cents_to_dollars,iso_code,letters_to_numbers,roman_to_number,ordinal_number,chemical_element,change_from,hourly_pay,profit,coins_value,sale_price,binary_to_decimal,decimal_to_binary,hex_to_decimal,decimal_to_hex
# With MORE=1, also the 14 of version 5's 49 that fail it (README, "The suite filter on them").
[ "${MORE:-0}" = 1 ] && FAIL+=,camel_to_words,snake_to_camel,zero_pad,month_numbers,days_in_month,minutes_to_hours,hours_to_minutes,duration_convert,multiply_by_digit,divide,average_of_two,difference_between,hundred_more,sum_list
# The tasks in both lists.
both() { comm -12 <(tr , '\n' <<<"$1" | sort) <(tr , '\n' <<<"$2" | sort) | paste -sd,; }
# The tasks of list $1 that are not in list $2, in $1's order.
minus() { tr , '\n' <<<"$1" | grep -vxF -f <(tr , '\n' <<<"$2") | paste -sd,; }
# All but every $2-th task of list $1 (the 1st, (K+1)-th, ... are kept).
dropped() { tr , '\n' <<<"$1" | awk -v k="$2" '(NR - 1) % k' | paste -sd,; }
